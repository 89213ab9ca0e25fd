//! The governed routes (OGC API – Features, catalog, evidence, exports).
//! Each governed handler: readiness check, strict
//! parameter parsing (400 naming the parameter), policy decision through
//! [`enforce`], obligations applied, and an [`AuditNote`] for the layer.
//!
//! Helpers return `Result<_, Response>`: the error *is* the answer, sent
//! as is, once per request; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::audit::AuditNote;
use crate::auth::Principal;
use crate::enforce::{self, Grant, Verdict};
use crate::releases::{Release, View};
use crate::{AppState, bytes_response, error, html, not_found};

pub(crate) mod catalog;
pub(crate) mod export;
pub(crate) mod probes;
use catalog::{catalog, evidence, prov, stac};
use export::export;
use probes::{audit, healthz, metrics, openapi, readyz};

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
    with_note(bytes_response(status, ctype, v.to_string().into_bytes()), n)
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
    let mut out = Value::Object(head).to_string().into_bytes();
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

async fn fallback() -> Response {
    not_found(note("none"))
}

impl IntoResponse for crate::auth::AuthError {
    fn into_response(self) -> Response {
        error(StatusCode::UNAUTHORIZED, "Unauthorized", self.0)
    }
}
