//! Features as one class of caller may see them (a *view* of a release
//! under one shape of obligations), and what a request reads through it:
//! a page, one feature, or all of them.
//!
//! Two backends hold the features. In memory (the embedded default) a view
//! is the release's features shaped once and kept; on PostGIS a view names
//! the projected table it reads, and each page is shaped as it is read.
//! Both evaluate the same typed query (`kfm-query`) with one meaning, and
//! shape with the same code, so a request gets the same bytes from either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use geojson::{Feature, JsonValue};
use kfm_pipeline::generalize::{Plan, generalize};
use kfm_projection::read::{LayerRef, Reader};
use kfm_query::filter::Subject;
use kfm_query::{Cursor, Filter, Queryables, SortKeys};

/// Shaping obligations that change the features themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub generalize: Option<Plan>,
    pub redact: Vec<String>,
}

impl Shape {
    pub(crate) fn key(&self) -> String {
        format!("{:?}|{}", self.generalize, self.redact.join(","))
    }
}

/// Applies a shape to features: generalisation (when the plan asks for
/// it) and redaction. `derived` says `base` is promotion's generalised
/// derivative, whose recorded uncertainty accounts for the original
/// geometry this process never reads: the larger one is kept.
///
/// Why again on a derivative: defence in depth. A derivative built under
/// an older plan is still served as the policy says now, and on the
/// derivative's own plan this changes nothing.
pub fn shape_features(base: Vec<Feature>, shape: &Shape, derived: bool) -> Vec<Feature> {
    let mut features = match &shape.generalize {
        Some(plan) => {
            let mut out = generalize(&base, plan);
            if derived {
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
        None => base,
    };
    for f in &mut features {
        if let Some(p) = f.properties.as_mut() {
            for k in &shape.redact {
                p.remove(k);
            }
            kfm_query::normal::object(p);
        }
    }
    features
}

/// A feature's bounding box (of the geometry as served).
pub(crate) fn bbox_of(f: &Feature) -> Option<[f64; 4]> {
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

pub(crate) fn feature_id(f: &Feature) -> Option<String> {
    match &f.id {
        Some(geojson::feature::Id::String(s)) => Some(s.clone()),
        Some(geojson::feature::Id::Number(n)) => Some(n.to_string()),
        None => None,
    }
}

/// A view's features in memory, shaped and encoded.
pub struct MemView {
    pub features: Vec<Feature>,
    /// Each feature as JSON, in order.
    pub json: Vec<Bytes>,
    /// Each feature's bbox, for `bbox=` filters.
    pub bboxes: Vec<Option<[f64; 4]>>,
    pub ids: HashMap<String, usize>,
    /// Each feature's time (when the collection has a time property).
    times: Vec<Option<i64>>,
    /// Geometries as `geo` types and search terms, made on first need.
    geoms: OnceLock<Vec<Option<geo::Geometry<f64>>>>,
    terms: OnceLock<Vec<Vec<String>>>,
}

/// A view read from a projected table.
pub struct PgView {
    pub reader: Arc<Reader>,
    pub layer: LayerRef,
    pub shape: Shape,
    /// The table holds promotion's generalised derivative.
    pub derived: bool,
}

pub enum ViewData {
    Memory(MemView),
    Postgis(PgView),
    /// A metadata-only release: no features to read.
    Empty,
}

/// Features as one class of caller may see them.
pub struct View {
    /// Whether coordinates were generalised for this view.
    pub generalized: bool,
    /// What this caller may query by (without redacted properties).
    pub queryables: Queryables,
    /// The collection's time property, if it has one this caller may see.
    pub temporal: Option<String>,
    /// How many features the view holds.
    pub rows: u64,
    /// Their extent as served.
    pub extent: Option<[f64; 4]>,
    pub data: ViewData,
    /// Item pages already answered from this view, by everything else
    /// their bytes depend on (see `routes::items`). A release never
    /// changes, so a page never goes stale; it leaves with its view.
    pub pages: PageCache,
    /// Vector tiles already drawn from this view (see `tiles`).
    pub tiles: crate::tiles::TileCache,
}

/// Encoded GeoJSON pages of one view. Why: every caller of a class gets
/// the same bytes for the same query, and building them (links,
/// governance members, 17 KB of copied features for 100 items) was a
/// fifth of the items route's work. Bounded: cleared when full, so odd
/// queries cannot grow it.
#[derive(Default)]
pub struct PageCache(Mutex<HashMap<String, CachedPage>>);

/// One answered page: the body and its `Link` header, kept together so a
/// cached answer is the same answer.
#[derive(Clone)]
pub struct CachedPage {
    pub body: Bytes,
    pub link: Option<axum::http::HeaderValue>,
}

/// Pages kept per view.
const PAGES_PER_VIEW: usize = 256;

impl PageCache {
    pub fn get(&self, key: &str) -> Option<CachedPage> {
        self.0.lock().ok()?.get(key).cloned()
    }

    pub fn put(&self, key: String, page: CachedPage) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= PAGES_PER_VIEW {
                m.clear();
            }
            m.insert(key, page);
        }
    }
}

impl View {
    /// A view over features already shaped, held in memory.
    pub fn memory(
        features: Vec<Feature>,
        generalized: bool,
        temporal: Option<&str>,
    ) -> Option<View> {
        // A feature that cannot be encoded makes the view unavailable (the
        // request is then answered as not available), never an empty item.
        let json = features
            .iter()
            .map(|f| serde_json::to_vec(f).ok().map(Bytes::from))
            .collect::<Option<Vec<_>>>()?;
        let bboxes: Vec<Option<[f64; 4]>> = features.iter().map(bbox_of).collect();
        let ids = features
            .iter()
            .enumerate()
            .filter_map(|(i, f)| feature_id(f).map(|id| (id, i)))
            .collect();
        let mut obs = kfm_query::Observer::new();
        for f in &features {
            obs.observe(
                f.properties.as_ref(),
                f.geometry.as_ref().map(|g| g.value.type_name()),
            );
        }
        let queryables = obs.finish();
        // The time property only if the caller can see it.
        let temporal = temporal.filter(|t| queryables.kind(t).is_some());
        let times = features
            .iter()
            .map(|f| {
                let t = temporal?;
                f.properties
                    .as_ref()?
                    .get(t)?
                    .as_str()
                    .and_then(kfm_query::time::instant)
            })
            .collect();
        let mut extent: Option<[f64; 4]> = None;
        for b in bboxes.iter().flatten() {
            extent = Some(match extent {
                None => *b,
                Some(o) => [
                    o[0].min(b[0]),
                    o[1].min(b[1]),
                    o[2].max(b[2]),
                    o[3].max(b[3]),
                ],
            });
        }
        Some(View {
            generalized,
            queryables,
            temporal: temporal.map(str::to_owned),
            rows: features.len() as u64,
            extent,
            pages: PageCache::default(),
            tiles: Default::default(),
            data: ViewData::Memory(MemView {
                features,
                json,
                bboxes,
                ids,
                times,
                geoms: OnceLock::new(),
                terms: OnceLock::new(),
            }),
        })
    }

    /// A view of a metadata-only release.
    pub fn empty() -> View {
        View {
            generalized: false,
            queryables: Queryables::default(),
            temporal: None,
            rows: 0,
            extent: None,
            pages: PageCache::default(),
            tiles: Default::default(),
            data: ViewData::Empty,
        }
    }
}

/// What an `items` request asks of a view.
pub struct ItemQuery {
    /// Every condition (bbox, datetime, filter, property filters, q).
    pub filter: Filter,
    pub sort: SortKeys,
    /// Resume after this place (a `next` link's cursor).
    pub after: Option<Cursor>,
    /// Or skip this many (the `offset` parameter).
    pub offset: u64,
    pub limit: u64,
    /// Whether the caller wants the features too (HTML), not only bytes.
    pub features: bool,
}

/// A page of answers.
pub struct Page {
    pub json: Vec<Bytes>,
    /// The features themselves, when asked for.
    pub features: Vec<Feature>,
    /// Where the next page starts, if there is one.
    pub next: Option<Cursor>,
}

/// Why a view could not answer. Said only to callers the policy allowed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The backend cannot answer now (the database is unreachable, the
    /// projection is being replaced); 503 with Retry-After.
    #[error("{0}")]
    Unavailable(String),
}

pub(crate) fn unavailable(e: kfm_projection::ProjectionError) -> ReadError {
    // The database's own words go to the log, not to the client.
    tracing::warn!(error = %e, "a projection read failed");
    ReadError::Unavailable("the projection could not be read just now; retry shortly".into())
}

impl MemView {
    pub(crate) fn geoms(&self) -> &[Option<geo::Geometry<f64>>] {
        self.geoms.get_or_init(|| {
            self.features
                .iter()
                .map(|f| {
                    let g = f.geometry.as_ref()?;
                    geo::Geometry::<f64>::try_from(&g.value).ok()
                })
                .collect()
        })
    }

    fn terms(&self) -> &[Vec<String>] {
        self.terms.get_or_init(|| {
            self.features
                .iter()
                .map(|f| kfm_query::terms::terms(f.properties.as_ref()))
                .collect()
        })
    }

    fn page(&self, q: &ItemQuery) -> Page {
        let n = self.features.len();
        let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
        let order: Vec<usize> = if matches!(q.filter, Filter::Bool(true)) && q.sort.is_empty() {
            // The hot path: a plain range, no list of every index.
            let start = match &q.after {
                Some(c) => usize::try_from(c.ord.saturating_add(1)).unwrap_or(usize::MAX),
                None => usize::try_from(q.offset).unwrap_or(usize::MAX),
            };
            let end = start.saturating_add(limit).saturating_add(1).min(n);
            (start.min(n)..end).collect()
        } else {
            let geoms = q.filter.needs_geometry().then(|| self.geoms());
            let terms = q.filter.needs_terms().then(|| self.terms());
            let kept = (0..n).filter(|&i| {
                let s = Subject {
                    props: self.features[i].properties.as_ref(),
                    geometry: geoms.and_then(|g| g[i].as_ref()),
                    bbox: self.bboxes[i].as_ref(),
                    time: self.times[i],
                    terms: terms.map_or(&[][..], |t| &t[i][..]),
                };
                q.filter.eval(&s) == Some(true)
            });
            let mut places: Vec<(kfm_query::sort::Place, usize)> = kept
                .map(|i| {
                    (
                        (
                            q.sort.values(self.features[i].properties.as_ref()),
                            i as i64,
                        ),
                        i,
                    )
                })
                .collect();
            if !q.sort.is_empty() {
                places.sort_by(|a, b| q.sort.compare(&a.0, &b.0));
            }
            let start = match &q.after {
                Some(c) => {
                    let at = c.place();
                    places.partition_point(|p| q.sort.compare(&p.0, &at).is_le())
                }
                None => usize::try_from(q.offset)
                    .unwrap_or(usize::MAX)
                    .min(places.len()),
            };
            places
                .into_iter()
                .skip(start)
                .take(limit.saturating_add(1))
                .map(|(_, i)| i)
                .collect()
        };
        let more = order.len() > limit;
        let shown = &order[..order.len().min(limit)];
        let next = match (more, shown.last()) {
            (true, Some(&i)) => Some(Cursor::new((
                q.sort.values(self.features[i].properties.as_ref()),
                i as i64,
            ))),
            _ => None,
        };
        Page {
            json: shown.iter().map(|&i| self.json[i].clone()).collect(),
            features: if q.features {
                shown.iter().map(|&i| self.features[i].clone()).collect()
            } else {
                Vec::new()
            },
            next,
        }
    }
}

impl PgView {
    fn shaped(&self, items: Vec<kfm_projection::read::Item>) -> Vec<(i64, Feature)> {
        let ords: Vec<i64> = items.iter().map(|i| i.ord).collect();
        let base: Vec<Feature> = items.into_iter().map(|i| i.feature).collect();
        ords.into_iter()
            .zip(shape_features(base, &self.shape, self.derived))
            .collect()
    }

    async fn page(&self, q: &ItemQuery) -> Result<Page, ReadError> {
        let items = self
            .reader
            .page(
                &self.layer,
                &self.shape.redact,
                &q.filter,
                &q.sort,
                q.after.as_ref(),
                if q.after.is_some() { 0 } else { q.offset },
                q.limit.saturating_add(1),
            )
            .await
            .map_err(unavailable)?;
        let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
        let mut shaped = self.shaped(items);
        let more = shaped.len() > limit;
        shaped.truncate(limit);
        let next = match (more, shaped.last()) {
            (true, Some((ord, f))) => {
                Some(Cursor::new((q.sort.values(f.properties.as_ref()), *ord)))
            }
            _ => None,
        };
        let mut json = Vec::with_capacity(shaped.len());
        for (_, f) in &shaped {
            json.push(Bytes::from(serde_json::to_vec(f).map_err(|e| {
                ReadError::Unavailable(format!("a feature could not be encoded: {e}"))
            })?));
        }
        Ok(Page {
            json,
            features: if q.features {
                shaped.into_iter().map(|(_, f)| f).collect()
            } else {
                Vec::new()
            },
            next,
        })
    }
}

impl View {
    /// A page of this view's features.
    pub async fn page(&self, q: &ItemQuery) -> Result<Page, ReadError> {
        match &self.data {
            ViewData::Memory(m) => Ok(m.page(q)),
            ViewData::Postgis(p) => p.page(q).await,
            ViewData::Empty => Ok(Page {
                json: Vec::new(),
                features: Vec::new(),
                next: None,
            }),
        }
    }

    /// One feature, by id.
    pub async fn feature(&self, fid: &str) -> Result<Option<Feature>, ReadError> {
        match &self.data {
            ViewData::Memory(m) => Ok(m.ids.get(fid).map(|&i| m.features[i].clone())),
            ViewData::Postgis(p) => {
                let item = p
                    .reader
                    .by_id(&p.layer, &p.shape.redact, fid)
                    .await
                    .map_err(unavailable)?;
                Ok(item.and_then(|i| p.shaped(vec![i]).pop().map(|(_, f)| f)))
            }
            ViewData::Empty => Ok(None),
        }
    }

    /// Features in artifact order after position `after` (-1: the start),
    /// at most `n`: how exports read a view, batch by batch.
    pub async fn batch(&self, after: i64, n: usize) -> Result<Vec<(i64, Feature)>, ReadError> {
        match &self.data {
            ViewData::Memory(m) => {
                let start = usize::try_from(after.saturating_add(1)).unwrap_or(0);
                let end = start.saturating_add(n).min(m.features.len());
                Ok((start.min(end)..end)
                    .map(|i| (i as i64, m.features[i].clone()))
                    .collect())
            }
            ViewData::Postgis(p) => {
                let items = p
                    .reader
                    .batch(&p.layer, &p.shape.redact, after, n as u64)
                    .await
                    .map_err(unavailable)?;
                Ok(p.shaped(items))
            }
            ViewData::Empty => Ok(Vec::new()),
        }
    }

    /// As [`View::batch`], encoded (in memory: the bytes already made).
    pub async fn batch_json(&self, after: i64, n: usize) -> Result<Vec<(i64, Bytes)>, ReadError> {
        if let ViewData::Memory(m) = &self.data {
            let start = usize::try_from(after.saturating_add(1)).unwrap_or(0);
            let end = start.saturating_add(n).min(m.json.len());
            return Ok((start.min(end)..end)
                .map(|i| (i as i64, m.json[i].clone()))
                .collect());
        }
        self.batch(after, n)
            .await?
            .into_iter()
            .map(|(o, f)| {
                serde_json::to_vec(&f)
                    .map(|b| (o, Bytes::from(b)))
                    .map_err(|e| {
                        ReadError::Unavailable(format!("a feature could not be encoded: {e}"))
                    })
            })
            .collect()
    }
}
