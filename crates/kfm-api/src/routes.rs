//! The routes of SPEC §6. Each governed handler: readiness check, strict
//! parameter parsing (400 naming the parameter), policy decision through
//! [`enforce`], obligations applied, and an [`AuditNote`] for the layer.
//!
//! Helpers return `Result<_, Response>`: the error *is* the answer, sent
//! as is, once per request; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::audit::AuditNote;
use crate::auth::Principal;
use crate::enforce::{self, Grant, Verdict};
use crate::releases::{Release, View};
use crate::{AppState, bytes_response, error, html, not_found};

const GEOJSON: &str = "application/geo+json";
const JSON: &str = "application/json";
const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 10;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(landing))
        .route("/conformance", get(conformance))
        .route("/collections", get(collections))
        .route("/collections/{collection_id}", get(collection))
        .route("/collections/{collection_id}/items", get(items))
        .route("/collections/{collection_id}/items/{feature_id}", get(item))
        .route("/collections/{collection_id}/stac", get(stac))
        .route("/collections/{collection_id}/prov", get(prov))
        .route("/collections/{collection_id}/export", get(export))
        .route("/catalog", get(catalog))
        .route("/evidence/{version_id}/{feature_id}", get(evidence))
        .route("/audit/{audit_ref}", get(audit))
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(fallback)
}

fn note(action: &'static str) -> AuditNote {
    AuditNote {
        action,
        ..AuditNote::default()
    }
}

fn bad_request(msg: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "InvalidParameterValue", msg)
}

fn not_ready() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "NotReady",
        "the server is not ready (see /readyz); governed data is not served",
    )
}

fn with_note(mut r: Response, n: AuditNote) -> Response {
    r.extensions_mut().insert(n);
    r
}

/// Query parameters, checked: unknown names, repeats, and values over
/// 256 bytes are refused.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, Response> {
        let raw = raw.unwrap_or("");
        if raw.len() > 2048 {
            return Err(bad_request("the query string is over 2048 bytes"));
        }
        let mut out = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(bad_request(&format!(
                    "unknown query parameter {:?}: this route accepts {}",
                    k.chars().take(40).collect::<String>(),
                    allowed.join(", ")
                )));
            }
            if v.len() > 256 {
                return Err(bad_request(&format!("parameter {k} is over 256 bytes")));
            }
            if out.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad_request(&format!("parameter {k} is given twice")));
            }
        }
        Ok(Self(out))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn usize_in(&self, k: &str, default: usize, min: usize, max: usize) -> Result<usize, Response> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(bad_request(&format!(
                    "{k} must be an integer from {min} to {max}, got {:?}",
                    v.chars().take(40).collect::<String>()
                ))),
            },
        }
    }

    /// `bbox=minlon,minlat,maxlon,maxlat` in CRS84. minlon > maxlon crosses
    /// the antimeridian.
    fn bbox(&self) -> Result<Option<[f64; 4]>, Response> {
        let Some(v) = self.get("bbox") else {
            return Ok(None);
        };
        let parts: Vec<&str> = v.split(',').collect();
        if parts.len() != 4 {
            return Err(bad_request(
                "bbox must be four numbers: minlon,minlat,maxlon,maxlat (CRS84)",
            ));
        }
        let mut b = [0.0; 4];
        for (i, p) in parts.iter().enumerate() {
            b[i] = match p.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    return Err(bad_request(&format!(
                        "bbox value {} is not a number",
                        i + 1
                    )));
                }
            };
        }
        if !(-180.0..=180.0).contains(&b[0]) || !(-180.0..=180.0).contains(&b[2]) {
            return Err(bad_request("bbox longitudes must be within [-180, 180]"));
        }
        if !(-90.0..=90.0).contains(&b[1]) || !(-90.0..=90.0).contains(&b[3]) || b[1] > b[3] {
            return Err(bad_request(
                "bbox latitudes must be within [-90, 90] with minlat <= maxlat",
            ));
        }
        Ok(Some(b))
    }

    /// `f=json|html`, else the Accept header.
    fn wants_html(&self, headers: &HeaderMap) -> Result<bool, Response> {
        match self.get("f") {
            Some("html") => Ok(true),
            Some("json") => Ok(false),
            Some(_) => Err(bad_request("f must be json or html")),
            None => Ok(headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"))),
        }
    }
}

/// Collection and feature ids: what the pipeline can produce, nothing that
/// could walk a path.
fn check_id(what: &str, id: &str) -> Result<(), Response> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(bad_request(&format!(
            "{what} must be 1-128 characters of letters, digits, '-', '_', '.', ':'"
        )))
    }
}

fn intersects(b: &[f64; 4], q: &[f64; 4]) -> bool {
    let lat = b[1] <= q[3] && b[3] >= q[1];
    let lon = if q[0] <= q[2] {
        b[0] <= q[2] && b[2] >= q[0]
    } else {
        b[2] >= q[0] || b[0] <= q[2]
    };
    lat && lon
}

fn extent_of(view: &View) -> Option<[f64; 4]> {
    let mut out: Option<[f64; 4]> = None;
    for b in view.bboxes.iter().flatten() {
        out = Some(match out {
            None => *b,
            Some(o) => [
                o[0].min(b[0]),
                o[1].min(b[1]),
                o[2].max(b[2]),
                o[3].max(b[3]),
            ],
        });
    }
    out
}

/// Looks up a served release and asks the policy; `Err` is the answer.
fn granted(
    st: &AppState,
    who: &Principal,
    id: &str,
    action: &'static str,
) -> Result<(Arc<Release>, Grant, Arc<View>), Response> {
    if !st.ready() {
        return Err(with_note(not_ready(), note(action)));
    }
    check_id("collection id", id)?;
    let Some(rel) = st.releases.get(id) else {
        return Err(not_found(note(action)));
    };
    grant_on(st, who, rel, action)
}

fn grant_on(
    st: &AppState,
    who: &Principal,
    rel: Arc<Release>,
    action: &'static str,
) -> Result<(Arc<Release>, Grant, Arc<View>), Response> {
    match enforce::release(st, who, action, &rel) {
        Verdict::Deny(n) => Err(not_found(n)),
        Verdict::Allow(g) => match rel.view(&g.shape) {
            Some(v) => Ok((rel, g, v)),
            // Metadata-only: there are no features to shape.
            None => Ok((
                rel.clone(),
                g,
                Arc::new(View {
                    features: Vec::new(),
                    json: Vec::new(),
                    bboxes: Vec::new(),
                    ids: HashMap::new(),
                    generalized: false,
                    pages: Default::default(),
                }),
            )),
        },
    }
}

/// Members every governed answer carries: which version, under which label
/// and license, and whether coordinates were generalised.
fn governance(rel: &Release, g: &Grant, view: &View) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("kfm:version_id".into(), json!(rel.version_id));
    m.insert("kfm:policy_label".into(), json!(rel.manifest.policy_label));
    m.insert("kfm:license".into(), json!(rel.manifest.license));
    if let Some((lic, text)) = &g.attribution {
        m.insert(
            "kfm:attribution".into(),
            json!({"license": lic, "text": text}),
        );
    }
    m.insert("kfm:generalized".into(), json!(view.generalized));
    m
}

/// Adds the governance members to a JSON object answer.
fn with_governance(mut doc: Value, rel: &Release, g: &Grant, view: &View) -> Value {
    if let Some(m) = doc.as_object_mut() {
        m.extend(governance(rel, g, view));
    }
    doc
}

fn base(st: &AppState) -> &str {
    st.config.base_url.trim_end_matches('/')
}

fn json_answer(status: StatusCode, ctype: &'static str, v: &Value, n: AuditNote) -> Response {
    with_note(
        bytes_response(status, ctype, serde_json::to_vec(v).unwrap_or_default()),
        n,
    )
}

#[utoipa::path(get, path = "/", tag = "OGC API - Features",
    responses((status = 200, description = "Landing page (JSON or HTML)")))]
pub(crate) async fn landing(
    State(st): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["f"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let b = base(&st);
    let doc = json!({
        "title": "KFM governed API",
        "description": "Kansas Frontier Matrix: governed geospatial datasets. Every answer is decided by the pinned policy and recorded in the audit ledger.",
        "links": [
            {"rel": "self", "type": JSON, "href": format!("{b}/")},
            {"rel": "alternate", "type": "text/html", "href": format!("{b}/?f=html")},
            {"rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.1", "href": format!("{b}/openapi.json")},
            {"rel": "conformance", "type": JSON, "href": format!("{b}/conformance")},
            {"rel": "data", "type": JSON, "href": format!("{b}/collections")},
            {"rel": "http://www.w3.org/ns/dcat#Catalog", "type": "application/ld+json", "href": format!("{b}/catalog")}
        ]
    });
    match q.wants_html(&headers) {
        Ok(true) => with_note(html::landing(b, &st.releases.all().len()), note("none")),
        Ok(false) => json_answer(StatusCode::OK, JSON, &doc, note("none")),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/conformance", tag = "OGC API - Features",
    responses((status = 200, description = "Conformance classes")))]
pub(crate) async fn conformance() -> Response {
    let doc = json!({"conformsTo": [
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30"
    ]});
    json_answer(StatusCode::OK, JSON, &doc, note("none"))
}

fn collection_doc(st: &AppState, rel: &Release, g: &Grant, view: &View) -> Value {
    let b = base(st);
    let id = &rel.dataset;
    let mut links = vec![
        json!({"rel": "self", "type": JSON, "href": format!("{b}/collections/{id}")}),
        json!({"rel": "alternate", "type": "text/html", "href": format!("{b}/collections/{id}?f=html")}),
        json!({"rel": "items", "type": GEOJSON, "href": format!("{b}/collections/{id}/items")}),
        json!({"rel": "items", "type": "text/html", "href": format!("{b}/collections/{id}/items?f=html")}),
        json!({"rel": "describedby", "type": JSON, "title": "STAC Collection", "href": format!("{b}/collections/{id}/stac")}),
        json!({"rel": "via", "type": JSON, "title": "PROV-JSON provenance", "href": format!("{b}/collections/{id}/prov")}),
        json!({"rel": "enclosure", "type": GEOJSON, "title": "Export (GeoJSON)", "href": format!("{b}/collections/{id}/export?format=geojson")}),
        json!({"rel": "enclosure", "type": "text/csv", "title": "Export (CSV)", "href": format!("{b}/collections/{id}/export?format=csv")}),
    ];
    if !rel.manifest.license.starts_with("LicenseRef-") {
        links.push(json!({"rel": "license", "type": "text/html", "title": rel.manifest.license, "href": format!("https://spdx.org/licenses/{}.html", rel.manifest.license)}));
    }
    let mut doc = json!({
        "id": id,
        "title": rel.title,
        "description": rel.description,
        "itemType": "feature",
        "crs": ["http://www.opengis.net/def/crs/OGC/1.3/CRS84"],
        "links": links,
    });
    // The extent of what *this caller* sees: for generalised data the
    // precise extent would itself reveal locations.
    if let Some(e) = extent_of(view) {
        doc["extent"] = json!({"spatial": {"bbox": [e], "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}});
    }
    with_governance(doc, rel, g, view)
}

#[utoipa::path(get, path = "/collections", tag = "OGC API - Features",
    responses((status = 200, description = "The collections this caller may read")))]
pub(crate) async fn collections(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
    let q = match Query::parse(q.as_deref(), &["f"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let mut docs = Vec::new();
    let mut shown = Vec::new();
    let mut durable = false;
    for rel in st.releases.all() {
        if let Ok((rel, g, view)) = grant_on(&st, &who, rel, "read") {
            durable |= g.note.durable;
            docs.push(collection_doc(&st, &rel, &g, &view));
            shown.push((rel, g.attribution.clone(), view.generalized));
        }
    }
    let n = AuditNote {
        action: "read",
        durable,
        ..AuditNote::default()
    };
    let b = base(&st);
    match q.wants_html(&headers) {
        Ok(true) => with_note(html::collections(b, &shown), n),
        Ok(false) => json_answer(
            StatusCode::OK,
            JSON,
            &json!({
                "links": [
                    {"rel": "self", "type": JSON, "href": format!("{b}/collections")},
                    {"rel": "alternate", "type": "text/html", "href": format!("{b}/collections?f=html")}
                ],
                "collections": docs
            }),
            n,
        ),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/collections/{collection_id}", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "One collection"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)")))]
pub(crate) async fn collection(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["f"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (rel, g, view) = match granted(&st, &who, &id, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    match q.wants_html(&headers) {
        Ok(true) => with_note(
            html::collection(base(&st), &rel, &g, &view, extent_of(&view)),
            g.note,
        ),
        Ok(false) => {
            let doc = collection_doc(&st, &rel, &g, &view);
            json_answer(StatusCode::OK, JSON, &doc, g.note)
        }
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/collections/{collection_id}/items", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("bbox" = Option<String>, Query, description = "minlon,minlat,maxlon,maxlat (CRS84); filters on the geometry as served to this caller"),
        ("limit" = Option<usize>, Query, description = "1-10000, default 10"),
        ("offset" = Option<usize>, Query, description = "Features to skip"),
        ("f" = Option<String>, Query, description = "json or html")),
    responses((status = 200, description = "GeoJSON FeatureCollection with license, attribution and generalisation notices", content_type = "application/geo+json"),
        (status = 400, description = "Malformed parameter"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)")))]
pub(crate) async fn items(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["bbox", "limit", "offset", "f"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (limit, offset, bbox, html) = match (
        q.usize_in("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        q.usize_in("offset", 0, 0, 1_000_000_000),
        q.bbox(),
        q.wants_html(&headers),
    ) {
        (Ok(l), Ok(o), Ok(b), Ok(h)) => (l, o, b, h),
        (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (.., Err(r)) => return r,
    };
    let (rel, g, view) = match granted(&st, &who, &id, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Without a bbox the page is a plain range: no per-request list of
    // every feature index (this is the hot path of the benchmark).
    let window = |n: usize| offset.min(n)..offset.saturating_add(limit).min(n);
    let (matched, page): (usize, Vec<usize>) = match &bbox {
        None => (view.json.len(), window(view.json.len()).collect()),
        Some(qb) => {
            let all: Vec<usize> = view
                .bboxes
                .iter()
                .enumerate()
                .filter(|(_, b)| b.as_ref().is_some_and(|b| intersects(b, qb)))
                .map(|(i, _)| i)
                .collect();
            let page = all[window(all.len())].to_vec();
            (all.len(), page)
        }
    };
    if html {
        let feats: Vec<&geojson::Feature> = page.iter().map(|&i| &view.features[i]).collect();
        return with_note(
            html::items(base(&st), &rel, &g, &view, &feats, matched, offset, limit),
            g.note,
        );
    }
    // The page's bytes depend on the view (which release, which shape),
    // the attribution this grant attaches, and the query; nothing else.
    let page_key = {
        let (lic, text) = g
            .attribution
            .as_ref()
            .map_or(("", ""), |(l, t)| (l.as_str(), t.as_str()));
        format!(
            "{limit}\u{1f}{offset}\u{1f}{}\u{1f}{lic}\u{1f}{text}",
            q.get("bbox").unwrap_or("")
        )
    };
    if let Some(page) = view.pages.get(&page_key) {
        return with_note(bytes_response(StatusCode::OK, GEOJSON, page), g.note);
    }
    let b = base(&st);
    let mut qs = format!("limit={limit}");
    if let Some(bb) = q.get("bbox") {
        qs.push_str("&bbox=");
        qs.push_str(&form_urlencoded::byte_serialize(bb.as_bytes()).collect::<String>());
    }
    let href = |off: usize| format!("{b}/collections/{id}/items?{qs}&offset={off}");
    let mut links = vec![
        json!({"rel": "self", "type": GEOJSON, "href": href(offset)}),
        json!({"rel": "alternate", "type": "text/html", "href": format!("{}&f=html", href(offset))}),
        json!({"rel": "collection", "type": JSON, "href": format!("{b}/collections/{id}")}),
    ];
    if offset + page.len() < matched {
        links.push(json!({"rel": "next", "type": GEOJSON, "href": href(offset + page.len())}));
    }
    if offset > 0 {
        links.push(
            json!({"rel": "prev", "type": GEOJSON, "href": href(offset.saturating_sub(limit))}),
        );
    }
    let mut head = serde_json::Map::new();
    head.insert("type".into(), json!("FeatureCollection"));
    head.insert("numberMatched".into(), json!(matched));
    head.insert("numberReturned".into(), json!(page.len()));
    head.extend(governance(&rel, &g, &view));
    head.insert("links".into(), Value::Array(links));
    let mut out = serde_json::to_vec(&Value::Object(head)).unwrap_or_default();
    out.pop(); // the closing brace: features follow
    out.extend_from_slice(b",\"features\":[");
    let size: usize = page.iter().map(|&i| view.json[i].len() + 1).sum();
    out.reserve(size + 2);
    for (n, &i) in page.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&view.json[i]);
    }
    out.extend_from_slice(b"]}");
    let page = Bytes::from(out);
    view.pages.put(page_key, page.clone());
    with_note(bytes_response(StatusCode::OK, GEOJSON, page), g.note)
}

#[utoipa::path(get, path = "/collections/{collection_id}/items/{feature_id}", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("feature_id" = String, Path, description = "Feature id"),
        ("f" = Option<String>, Query, description = "json or html")),
    responses((status = 200, description = "One feature, as this caller may see it", content_type = "application/geo+json"),
        (status = 404, description = "No such feature, or not available to this caller (same answer)")))]
pub(crate) async fn item(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path((id, fid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["f"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if let Err(r) = check_id("feature id", &fid) {
        return r;
    }
    let (rel, g, view) = match granted(&st, &who, &id, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(&i) = view.ids.get(&fid) else {
        return not_found(g.note);
    };
    match q.wants_html(&headers) {
        Ok(true) => with_note(
            html::items(base(&st), &rel, &g, &view, &[&view.features[i]], 1, 0, 1),
            g.note,
        ),
        Ok(false) => {
            let b = base(&st);
            let mut f = serde_json::to_value(&view.features[i]).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut f {
                m.extend(governance(&rel, &g, &view));
                m.insert("links".into(), json!([
                    {"rel": "self", "type": GEOJSON, "href": format!("{b}/collections/{id}/items/{fid}")},
                    {"rel": "collection", "type": JSON, "href": format!("{b}/collections/{id}")},
                    {"rel": "describedby", "type": JSON, "title": "Evidence", "href": format!("{b}/evidence/{}/{fid}", rel.version_id)}
                ]));
            }
            json_answer(StatusCode::OK, GEOJSON, &f, g.note)
        }
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/collections/{collection_id}/stac", tag = "Catalog",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "STAC 1.1 Collection, assets limited to what this caller may read"),
        (status = 404, description = "Not found or not available")))]
pub(crate) async fn stac(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let (rel, g, view) = match granted(&st, &who, &id, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let b = base(&st);
    let mut doc = rel.stac.clone();
    // Only the layer this caller is served, through the API (no store URL).
    let want = if view.generalized {
        "generalized"
    } else {
        "data"
    };
    if let Some(assets) = doc["assets"].as_object_mut() {
        assets.retain(|_, a| {
            a["roles"]
                .as_array()
                .is_some_and(|r| r.first() == Some(&json!(want)))
                && a["type"] == json!(GEOJSON)
        });
        for a in assets.values_mut() {
            a["href"] = json!(format!("{b}/collections/{id}/export?format=geojson"));
        }
    }
    if let Some(e) = extent_of(&view) {
        doc["extent"]["spatial"]["bbox"] = json!([e]);
    }
    if let Some(links) = doc["links"].as_array_mut() {
        links.retain(|l| l["rel"] != "describedby" && l["rel"] != "via");
        links.push(
            json!({"rel": "self", "type": JSON, "href": format!("{b}/collections/{id}/stac")}),
        );
        links.push(
            json!({"rel": "root", "type": JSON, "href": format!("{b}/collections/{id}/stac")}),
        );
        links.push(json!({"rel": "via", "type": JSON, "title": "PROV-JSON provenance", "href": format!("{b}/collections/{id}/prov")}));
        links.push(
            json!({"rel": "items", "type": GEOJSON, "href": format!("{b}/collections/{id}/items")}),
        );
    }
    let doc = with_governance(doc, &rel, &g, &view);
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}

#[utoipa::path(get, path = "/collections/{collection_id}/prov", tag = "Catalog",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "PROV-JSON of the published version"),
        (status = 404, description = "Not found or not available")))]
pub(crate) async fn prov(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let (rel, g, _) = match granted(&st, &who, &id, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    json_answer(StatusCode::OK, JSON, &rel.prov, g.note)
}

#[utoipa::path(get, path = "/collections/{collection_id}/export", tag = "Exports",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("format" = Option<String>, Query, description = "geojson (default) or csv")),
    responses((status = 200, description = "The whole dataset as this caller may see it, license and attribution embedded; answered only once the audit record is durable"),
        (status = 404, description = "Not found, not available, or not exportable (same answer)")))]
pub(crate) async fn export(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["format"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let csv = match q.get("format") {
        None | Some("geojson") => false,
        Some("csv") => true,
        Some(_) => return bad_request("format must be geojson or csv"),
    };
    let (rel, g, view) = match granted(&st, &who, &id, "export") {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Streamed: memory does not grow with the export, and when the
    // client goes away its body is dropped and the writing stops.
    let mut r = if csv {
        match export_csv(rel.clone(), &g, view.clone()) {
            Ok(body) => {
                let mut r = Response::new(body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                );
                r
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "ExportFailed", &e),
        }
    } else {
        let mut head = serde_json::Map::new();
        head.insert("type".into(), json!("FeatureCollection"));
        head.extend(governance(&rel, &g, &view));
        head.insert("kfm:manifest_digest".into(), json!(rel.manifest_digest));
        let mut out = serde_json::to_vec(&Value::Object(head)).unwrap_or_default();
        out.pop();
        out.extend_from_slice(b",\"features\":[");
        let v = view.clone();
        let chunks = futures::stream::unfold(Some((0usize, Some(Bytes::from(out)))), move |st| {
            let v = v.clone();
            async move {
                let (at, head) = st?;
                if let Some(h) = head {
                    return Some((Ok::<_, std::io::Error>(h), Some((at, None))));
                }
                if at >= v.json.len() {
                    return if at == usize::MAX {
                        None
                    } else {
                        Some((Ok(Bytes::from_static(b"]}")), Some((usize::MAX, None))))
                    };
                }
                let end = (at + EXPORT_CHUNK).min(v.json.len());
                let mut buf = Vec::new();
                for (n, f) in v.json[at..end].iter().enumerate() {
                    if at + n > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(f);
                }
                Some((Ok(Bytes::from(buf)), Some((end, None))))
            }
        });
        let mut r = Response::new(Body::from_stream(chunks));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(GEOJSON));
        r
    };
    let ext = if csv { "csv" } else { "geojson" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.{ext}\"",
        rel.version_id.replace('@', "-")
    )) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    with_note(r, g.note)
}

/// Features per chunk of a streamed export.
const EXPORT_CHUNK: usize = 256;

/// CSV with the license and attribution as leading `#` comment lines (read
/// them with `comment='#'` in pandas, or skip 3 header lines in QGIS).
/// Points become `longitude,latitude`; other geometries a GeoJSON column.
///
/// Streamed in chunks of [`EXPORT_CHUNK`] rows, in time linear in its size:
/// the columns are found in one pass (a set, in first-seen order), and
/// each row places a feature's properties by column index.
fn export_csv(rel: Arc<Release>, g: &Grant, view: Arc<View>) -> Result<Body, String> {
    let mut head = Vec::new();
    head.extend_from_slice(format!("# dataset: {}\n", rel.version_id).as_bytes());
    head.extend_from_slice(format!("# license: {}\n", rel.manifest.license).as_bytes());
    if let Some((_, text)) = &g.attribution {
        head.extend_from_slice(format!("# attribution: {}\n", text.replace('\n', " ")).as_bytes());
    }
    if view.generalized {
        head.extend_from_slice(b"# coordinates generalized: see dataGeneralizations and coordinateUncertaintyInMeters\n");
    }
    let mut keys: Vec<String> = Vec::new();
    let mut column: HashMap<String, usize> = HashMap::new();
    for f in &view.features {
        for k in f.properties.iter().flat_map(|p| p.keys()) {
            if !column.contains_key(k) {
                column.insert(k.clone(), keys.len());
                keys.push(k.clone());
            }
        }
    }
    let mut w = csv::Writer::from_writer(head);
    w.write_record(
        ["id", "longitude", "latitude", "geometry"]
            .into_iter()
            .chain(keys.iter().map(String::as_str)),
    )
    .map_err(|e| e.to_string())?;
    let head = w.into_inner().map_err(|e| e.to_string())?;
    let width = 4 + keys.len();
    let column = Arc::new(column);
    let chunks = futures::stream::unfold(Some((0usize, Some(head))), move |st| {
        let (view, column) = (view.clone(), column.clone());
        async move {
            let (at, head) = st?;
            if let Some(h) = head {
                return Some((Ok::<_, std::io::Error>(Bytes::from(h)), Some((at, None))));
            }
            if at >= view.features.len() {
                return None;
            }
            let end = (at + EXPORT_CHUNK).min(view.features.len());
            let mut w = csv::Writer::from_writer(Vec::new());
            let mut row = vec![String::new(); width];
            for f in &view.features[at..end] {
                row.iter_mut().for_each(String::clear);
                if let Some(id) = &f.id {
                    row[0] = match id {
                        geojson::feature::Id::String(s) => s.clone(),
                        geojson::feature::Id::Number(n) => n.to_string(),
                    };
                }
                match f.geometry.as_ref().map(|g| &g.value) {
                    Some(geojson::GeometryValue::Point { coordinates: c }) if c.len() >= 2 => {
                        row[1] = c[0].to_string();
                        row[2] = c[1].to_string();
                    }
                    Some(_) => {
                        row[3] = f
                            .geometry
                            .as_ref()
                            .and_then(|g| serde_json::to_string(g).ok())
                            .unwrap_or_default();
                    }
                    None => {}
                }
                for (k, v) in f.properties.iter().flatten() {
                    if let Some(&c) = column.get(k) {
                        row[4 + c] = match v {
                            Value::Null => String::new(),
                            Value::String(s) => s.clone(),
                            v => v.to_string(),
                        };
                    }
                }
                if let Err(e) = w.write_record(&row) {
                    return Some((Err(std::io::Error::other(e)), None));
                }
            }
            match w.into_inner() {
                Ok(b) => Some((Ok(Bytes::from(b)), Some((end, None)))),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Ok(Body::from_stream(chunks))
}

#[utoipa::path(get, path = "/catalog", tag = "Catalog",
    responses((status = 200, description = "DCAT 3 catalog (JSON-LD) of the datasets this caller may read")))]
pub(crate) async fn catalog(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
    let b = base(&st).to_owned();
    let mut datasets = Vec::new();
    let mut durable = false;
    for rel in st.releases.all() {
        let Ok((rel, g, view)) = grant_on(&st, &who, rel, "read") else {
            continue;
        };
        durable |= g.note.durable;
        let mut d = rel.dcat["@graph"][0].clone();
        let id = &rel.dataset;
        let license = d["dct:license"].clone();
        d["dcat:distribution"] = json!([
            {"@type": "dcat:Distribution", "dcat:accessURL": {"@id": format!("{b}/collections/{id}/items")}, "dcat:mediaType": GEOJSON, "dct:license": license},
            {"@type": "dcat:Distribution", "dcat:downloadURL": {"@id": format!("{b}/collections/{id}/export?format=geojson")}, "dcat:mediaType": GEOJSON, "dct:license": license},
            {"@type": "dcat:Distribution", "dcat:downloadURL": {"@id": format!("{b}/collections/{id}/export?format=csv")}, "dcat:mediaType": "text/csv", "dct:license": license}
        ]);
        d["rdfs:seeAlso"] = json!([{"@id": format!("{b}/collections/{id}/stac")}, {"@id": format!("{b}/collections/{id}/prov")}]);
        match extent_of(&view) {
            Some(e) => {
                d["dct:spatial"]["dcat:bbox"]["@value"] = json!(format!(
                    "POLYGON(({w} {s}, {e2} {s}, {e2} {n}, {w} {n}, {w} {s}))",
                    w = e[0],
                    s = e[1],
                    e2 = e[2],
                    n = e[3]
                ));
            }
            None => {
                if let Some(m) = d.as_object_mut() {
                    m.remove("dct:spatial");
                }
            }
        }
        d["kfm:generalized"] = json!(view.generalized);
        datasets.push(d);
    }
    let context = st
        .releases
        .all()
        .first()
        .map(|r| r.dcat["@context"].clone())
        .unwrap_or_else(
            || json!({"dcat": "http://www.w3.org/ns/dcat#", "dct": "http://purl.org/dc/terms/"}),
        );
    let doc = json!({
        "@context": context,
        "@id": format!("{b}/catalog"),
        "@type": "dcat:Catalog",
        "dct:title": "KFM catalog",
        "dcat:dataset": datasets,
    });
    json_answer(
        StatusCode::OK,
        "application/ld+json",
        &doc,
        AuditNote {
            action: "read",
            durable,
            ..AuditNote::default()
        },
    )
}

#[utoipa::path(get, path = "/evidence/{version_id}/{feature_id}", tag = "Evidence",
    params(("version_id" = String, Path, description = "Dataset version id, `<dataset>@v<N>`"),
        ("feature_id" = String, Path, description = "Feature id")),
    responses((status = 200, description = "The feature as this caller may see it, with its provenance chain and digests"),
        (status = 404, description = "Not found or not available")))]
pub(crate) async fn evidence(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path((vid, fid)): Path<(String, String)>,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
    let Some((ds, v)) = vid.split_once("@v") else {
        return bad_request("version id must be <dataset>@v<N>");
    };
    if let Err(r) = check_id("dataset id", ds).and_then(|()| check_id("feature id", &fid)) {
        return r;
    }
    let Ok(v) = v.parse::<u64>() else {
        return bad_request("version id must be <dataset>@v<N>");
    };
    let Some(rel) = st.releases.version(st.audit.ledger(), ds, v).await else {
        return not_found(note("read"));
    };
    let (rel, g, view) = match grant_on(&st, &who, rel, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(&i) = view.ids.get(&fid) else {
        return not_found(g.note);
    };
    let layer = if view.generalized && rel.generalized.is_some() {
        rel.generalized.as_ref()
    } else {
        rel.precise.as_ref()
    };
    let acquisitions: Vec<Value> = rel.prov["entity"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, e)| e["prov:type"] == "kfm:Acquisition")
                .map(|(k, e)| json!({"id": k, "digest": e["kfm:digest"], "size": e["kfm:size"]}))
                .collect()
        })
        .unwrap_or_default();
    let activities: Vec<Value> = rel.prov["activity"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, a)| json!({"id": k, "type": a["prov:type"], "label": a["prov:label"], "ended": a["prov:endTime"]}))
                .collect()
        })
        .unwrap_or_default();
    let m = &rel.manifest;
    let now = st.releases.get(&rel.dataset);
    let current = now
        .as_ref()
        .is_some_and(|c| c.manifest_digest == rel.manifest_digest);
    let doc = json!({
        "dataset_version_id": rel.version_id,
        "feature": view.features[i],
        "current_release": current,
        // A superseded version, answered only where the policy allows it
        // (the decision's input says `release: withdrawn`), and marked.
        "release": if current { "current" } else { "withdrawn" },
        "superseded_by": if current { None } else { now.map(|c| c.version_id.clone()) },
        "decision": {"reason": g.reason, "obligations": g.obligations},
        "provenance": {
            "manifest": {"path": format!("catalog/{}/v{}/release.dsse.json", m.dataset, m.version), "digest": rel.manifest_digest},
            "pointer_ledger_index": rel.pointer_ledger_index,
            "receipt": {"digest": m.receipt.digest, "ledger_index": m.receipt.ledger_index},
            "run_id": m.run_id,
            "artifact": layer.map(|l| json!({"path": l.path, "digest": l.digest})),
            "catalog": m.catalog.iter().map(|c| json!({"path": c.path, "digest": c.digest.to_string()})).collect::<Vec<_>>(),
            "policy_at_release": {"digest": m.policy.digest, "revision": m.policy.revision},
            "acquisitions": acquisitions,
            "activities": activities,
        },
        "verify": "kfm ledger prove <ledger_index> proves the receipt and manifest are in the ledger; `kfm catalog validate` re-checks every digest",
    });
    let doc = with_governance(doc, &rel, &g, &view);
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}

#[utoipa::path(get, path = "/audit/{audit_ref}", tag = "Audit",
    params(("audit_ref" = String, Path, description = "A Kfm-Audit-Ref value (the record's leaf hash, 64 hex)")),
    responses((status = 200, description = "The ledger entry, its inclusion proof and the signed checkpoint (auditors only)"),
        (status = 404, description = "No such record, or not available to this caller (same answer)")))]
pub(crate) async fn audit(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(r): Path<String>,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("audit"));
    }
    let mut leaf = [0u8; 32];
    if r.len() != 64 || hex::decode_to_slice(&r, &mut leaf).is_err() {
        return bad_request(
            "an audit reference is 64 lowercase hex digits (the Kfm-Audit-Ref header)",
        );
    }
    let (allow, n) = enforce::audit_read(&st, &who);
    if !allow {
        return not_found(n);
    }
    st.audit.settle(&leaf).await;
    let ledger = st.audit.ledger();
    let Some(index) = ledger.find_leaf(&leaf).await else {
        return not_found(n);
    };
    let (entry, proof) = match (ledger.entry(index).await, ledger.prove(index).await) {
        (Ok(e), Ok(p)) => (e, p),
        _ => {
            return with_note(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "LedgerUnavailable",
                    "the ledger could not be read",
                ),
                n,
            );
        }
    };
    let entry_json: Value = serde_json::from_slice(&entry).unwrap_or(Value::Null);
    let doc = json!({
        "ref": r,
        "index": index,
        "leaf_hash": hex::encode(leaf),
        "entry": entry_json,
        "entry_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &entry),
        "inclusion_proof": {
            "tree_size": proof.size,
            "hashes": proof.proof.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "checkpoint": String::from_utf8_lossy(&proof.checkpoint),
        "origin": st.config.ledger_origin,
        "verifier_key": st.config.verifier_key,
    });
    json_answer(StatusCode::OK, JSON, &doc, n)
}

#[utoipa::path(get, path = "/healthz", tag = "Probes",
    responses((status = 200, description = "The process is up and its ledger writer works (or is retrying)"),
        (status = 503, description = "The ledger writer gave up: restart the process (reopening recovers every durable entry)")))]
pub(crate) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let h = st.audit.ledger().health();
    match h.failed {
        None => json_answer(
            StatusCode::OK,
            JSON,
            &json!({
                "status": "ok",
                "ledger_retrying": h.appends_retrying.as_ref().map(|(e, _)| e),
                "tiles_retrying": h.tiles_retrying.as_ref().map(|(e, _)| e),
            }),
            note("none"),
        ),
        Some(f) => json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            &json!({"status": "unhealthy", "reason": format!("the ledger writer gave up: {f}"),
                "action": "restart the process: reopening the ledger recovers every durable entry"}),
            note("none"),
        ),
    }
}

#[utoipa::path(get, path = "/readyz", tag = "Probes",
    responses((status = 200, description = "Pinned policy loaded, ledger open and healthy; releases that are not served are counted (named, with the reason, to callers the policy lets read the audit trail)"),
        (status = 503, description = "Not ready, with the reasons")))]
pub(crate) async fn readyz(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    let why = st.not_ready();
    let not_served = st.not_served.read().map(|n| n.clone()).unwrap_or_default();
    // Naming a dataset would tell anyone it exists: only callers the
    // policy lets read the audit trail see which releases and why.
    let (details, n) = if not_served.is_empty() {
        (false, note("none"))
    } else {
        enforce::audit_read(&st, &who)
    };
    st.metrics.ready.set(i64::from(why.is_empty()));
    let status = if why.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_answer(
        status,
        JSON,
        &json!({
            "ready": why.is_empty(),
            "reasons": why,
            "policy_digest": st.policy.digest().to_string(),
            "environment": st.config.environment.as_str(),
            "ledger_size": st.audit.ledger().size(),
            "releases": st.releases.all().len(),
            "releases_not_served": not_served.len(),
            "not_served": details.then_some(not_served),
        }),
        n,
    )
}

#[utoipa::path(get, path = "/metrics", tag = "Probes",
    responses((status = 200, description = "Prometheus/OpenMetrics text; labels are route templates, status, decision and action only")))]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.ready.set(i64::from(st.ready()));
    with_note(
        bytes_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            st.metrics.render().into_bytes(),
        ),
        note("none"),
    )
}

#[utoipa::path(get, path = "/openapi.json", tag = "Probes",
    responses((status = 200, description = "This document")))]
pub(crate) async fn openapi() -> Response {
    with_note(
        bytes_response(
            StatusCode::OK,
            JSON,
            crate::openapi::document().into_bytes(),
        ),
        note("none"),
    )
}

async fn fallback() -> Response {
    not_found(note("none"))
}

impl IntoResponse for crate::auth::AuthError {
    fn into_response(self) -> Response {
        error(StatusCode::UNAUTHORIZED, "Unauthorized", self.0)
    }
}
