//! What the API serves: published releases, verified end to end, loaded
//! into memory with their features pre-serialised per policy "view".
//!
//! A release is served only after its pointer verifies (manifest digest and
//! signature, the ledger entries it names) and every artifact read back has
//! the digest its signed manifest records. A pointer that stops verifying
//! takes its dataset out of service (fail closed) until it verifies again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use geojson::{Feature, GeoJson, JsonValue};
use kfm_core::Digest;
use kfm_ledger::Ledger;
use kfm_pipeline::generalize::{Plan, generalize};
use kfm_pipeline::records::{self, Manifest};
use kfm_store::{ReadOnly, zones};

/// Read handles on exactly the zones the API may read (published, catalog,
/// processed): it has no way to name `raw` or `work`, and none of these can
/// write.
#[derive(Clone)]
pub struct Zones {
    pub published: ReadOnly<zones::Published>,
    pub processed: ReadOnly<zones::Processed>,
    pub catalog: ReadOnly<zones::Catalog>,
}

/// One features artifact, parsed.
pub struct Layer {
    pub features: Vec<Feature>,
    /// Store key and digest, for evidence.
    pub path: String,
    pub digest: String,
}

/// Features as one class of caller may see them, ready to send.
pub struct View {
    pub features: Vec<Feature>,
    /// Each feature as JSON, in order.
    pub json: Vec<Bytes>,
    /// Each feature's bbox (of the geometry as served), for `bbox=` filters.
    pub bboxes: Vec<Option<[f64; 4]>>,
    pub ids: HashMap<String, usize>,
    /// Whether coordinates were generalised for this view.
    pub generalized: bool,
    /// Item pages already answered from this view, by everything else
    /// their bytes depend on (see `routes::items`). A release never
    /// changes, so a page never goes stale; it leaves with its view.
    pub pages: PageCache,
}

/// Encoded GeoJSON pages of one view. Why: every caller of a class gets
/// the same bytes for the same query, and building them (links, governance
/// members, 17 KB of copied features for 100 items) was a fifth of the
/// items route's work. Bounded: cleared when full, so odd queries cannot
/// grow it.
#[derive(Default)]
pub struct PageCache(Mutex<HashMap<String, Bytes>>);

/// Pages kept per view.
const PAGES_PER_VIEW: usize = 256;

impl PageCache {
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.0.lock().ok()?.get(key).cloned()
    }

    pub fn put(&self, key: String, page: Bytes) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= PAGES_PER_VIEW {
                m.clear();
            }
            m.insert(key, page);
        }
    }
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
    views: Mutex<HashMap<String, Arc<View>>>,
}

/// Shaping obligations that change the features themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub generalize: Option<Plan>,
    pub redact: Vec<String>,
}

impl Shape {
    fn key(&self) -> String {
        format!("{:?}|{}", self.generalize, self.redact.join(","))
    }
}

fn bbox_of(f: &Feature) -> Option<[f64; 4]> {
    let g = f.geometry.as_ref()?;
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    kfm_pipeline::normalize::for_each_position(&g.value, &mut |p| {
        b[0] = b[0].min(p[0]);
        b[1] = b[1].min(p[1]);
        b[2] = b[2].max(p[0]);
        b[3] = b[3].max(p[1]);
    });
    b[0].is_finite().then_some(b)
}

fn feature_id(f: &Feature) -> Option<String> {
    match &f.id {
        Some(geojson::feature::Id::String(s)) => Some(s.clone()),
        Some(geojson::feature::Id::Number(n)) => Some(n.to_string()),
        None => None,
    }
}

impl Release {
    /// The features as a caller under `shape` may see them. Generalised
    /// views start from the generalised derivative when promotion made one
    /// (the precise layer is then never touched) and apply the obligation
    /// again here: defence in depth, so a derivative built under an older,
    /// coarser or finer plan is still served as the policy says now.
    pub fn view(&self, shape: &Shape) -> Option<Arc<View>> {
        let key = shape.key();
        if let Ok(v) = self.views.lock()
            && let Some(view) = v.get(&key)
        {
            return Some(view.clone());
        }
        let mut features: Vec<Feature> = match &shape.generalize {
            Some(plan) => {
                let (base, derived) = match (&self.generalized, &self.precise) {
                    (Some(g), _) => (&g.features, true),
                    (None, Some(p)) => (&p.features, false),
                    (None, None) => return None,
                };
                let mut out = generalize(base, plan);
                if derived {
                    // Keep the larger uncertainty: the derivative's own
                    // accounts for the original geometry, which this
                    // process never reads.
                    for (o, b) in out.iter_mut().zip(base.iter()) {
                        let before = b
                            .property("coordinateUncertaintyInMeters")
                            .and_then(JsonValue::as_u64)
                            .unwrap_or(0);
                        if let Some(props) = o.properties.as_mut() {
                            let now = props
                                .get("coordinateUncertaintyInMeters")
                                .and_then(JsonValue::as_u64)
                                .unwrap_or(0);
                            props.insert(
                                "coordinateUncertaintyInMeters".into(),
                                JsonValue::from(now.max(before)),
                            );
                        }
                    }
                }
                out
            }
            None => self.precise.as_ref()?.features.clone(),
        };
        if !shape.redact.is_empty() {
            for f in &mut features {
                if let Some(p) = f.properties.as_mut() {
                    for k in &shape.redact {
                        p.remove(k);
                    }
                }
            }
        }
        // A feature that cannot be encoded makes the view unavailable (the
        // request is then answered as not available), never an empty item.
        let json = features
            .iter()
            .map(|f| serde_json::to_vec(f).ok().map(Bytes::from))
            .collect::<Option<Vec<_>>>()?;
        let bboxes = features.iter().map(bbox_of).collect();
        let ids = features
            .iter()
            .enumerate()
            .filter_map(|(i, f)| feature_id(f).map(|id| (id, i)))
            .collect();
        let view = Arc::new(View {
            features,
            json,
            bboxes,
            ids,
            generalized: shape.generalize.is_some(),
            pages: PageCache::default(),
        });
        if let Ok(mut v) = self.views.lock() {
            // A handful of shapes exist per release; bound it all the same.
            if v.len() >= 16 {
                v.clear();
            }
            v.insert(key, view.clone());
        }
        Some(view)
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
    let got = Digest::of(&bytes).to_string();
    if got != digest {
        return Err(LoadError(format!(
            "{path} has digest {got}, the signed manifest records {digest}"
        )));
    }
    Ok(bytes)
}

fn parse_layer(bytes: &[u8], path: &str, digest: &str) -> Result<Layer, LoadError> {
    let gj: GeoJson = std::str::from_utf8(bytes)
        .map_err(|e| LoadError(format!("{path}: {e}")))?
        .parse()
        .map_err(|e| LoadError(format!("{path}: {e}")))?;
    let GeoJson::FeatureCollection(fc) = gj else {
        return Err(LoadError(format!("{path}: not a FeatureCollection")));
    };
    Ok(Layer {
        features: fc.features,
        path: path.to_owned(),
        digest: digest.to_owned(),
    })
}

/// Loads a version from its signed manifest: every artifact and catalog
/// document is read back and checked against the manifest's digests.
pub async fn load_version(
    zones: &Zones,
    manifest: Manifest,
    manifest_digest: String,
    pointer_ledger_index: Option<u64>,
) -> Result<Release, LoadError> {
    let mut precise = None;
    let mut generalized = None;
    for a in &manifest.artifacts {
        let digest = a.digest.to_string();
        match a.role.as_str() {
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
    Ok(Release {
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
        views: Mutex::new(HashMap::new()),
    })
}

/// The served releases, refreshed from the published zone.
pub struct Releases {
    zones: Zones,
    key: VerifyingKey,
    current: RwLock<HashMap<String, Arc<Release>>>,
    /// Versions read through the evidence resolver.
    versions: Mutex<HashMap<String, Arc<Release>>>,
    /// Every pointer state a dataset's release history records, by its
    /// store key (records are written once, so each is read once): the
    /// versions a pointer ever named, and how.
    history: RwLock<HashMap<String, records::ReleasePointer>>,
}

impl Releases {
    pub fn new(zones: Zones, key: VerifyingKey) -> Self {
        Self {
            zones,
            key,
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
                verified.manifest,
                p.manifest_digest.clone(),
                Some(p.ledger_index),
            )
            .await
            {
                Ok(r) => {
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
        let r = load_version(
            &self.zones,
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
