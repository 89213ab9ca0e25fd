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

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::AuditNote;
use crate::auth::Principal;
use crate::enforce::{self, Grant, Verdict};
use crate::layers::{self, Action, Decided};
use crate::releases::{Release, View, ViewError};
use crate::view::ReadError;
use crate::{AppState, bytes_response, error, html, not_found};

pub(crate) mod assets;
pub(crate) mod catalog;
pub(crate) mod export;
pub(crate) mod items;
pub(crate) mod probes;
pub(crate) mod search;
pub(crate) mod steward;
pub(crate) mod tiles;

const GEOJSON: &str = "application/geo+json";
const JSON: &str = "application/json";

/// Every route, registered once: the router and the OpenAPI document are
/// both made from this (each handler's `#[utoipa::path]` gives its path and
/// method). The routes of one collection sit under the decision layer for
/// their action, so their handlers receive a [`Decided`] and never see a
/// denied request.
pub(crate) fn api() -> OpenApiRouter<Arc<AppState>> {
    let decide = |a: &'static str| from_fn_with_state(Action(a), layers::decide);
    let read = OpenApiRouter::new()
        .routes(routes!(collection))
        .routes(routes!(items::items))
        .routes(routes!(items::item))
        .routes(routes!(items::queryables))
        .routes(routes!(tiles::tilesets))
        .routes(routes!(tiles::tileset_metadata))
        .routes(routes!(tiles::tilejson))
        .routes(routes!(tiles::tile))
        .routes(routes!(catalog::stac))
        .routes(routes!(catalog::prov))
        .route_layer(decide("read"));
    let export = OpenApiRouter::new()
        .routes(routes!(export::export))
        .route_layer(decide("export"));
    // Routes that decide per release themselves (lists, search, evidence)
    // or hold no governed data.
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(landing))
        .routes(routes!(conformance))
        .routes(routes!(collections))
        .routes(routes!(search::search))
        .routes(routes!(tiles::tile_matrix_sets))
        .routes(routes!(tiles::web_mercator_quad))
        .routes(routes!(catalog::catalog))
        .routes(routes!(catalog::evidence))
        .routes(routes!(probes::audit))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::livez))
        .routes(routes!(probes::readyz))
        .routes(routes!(probes::metrics))
        .routes(routes!(probes::openapi))
        .routes(routes!(probes::openapi30))
        .routes(routes!(assets::asset))
        .routes(routes!(steward::steward))
        .merge(read)
        .merge(export)
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
/// 256 bytes (4,096 for a `filter`) are refused.
struct Query(HashMap<String, String>);

/// Longest query string accepted, and longest `filter`.
const MAX_QUERY: usize = 8192;
const MAX_FILTER: usize = 4096;

impl Query {
    fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, Response> {
        let (q, extra) = Self::parse_open(raw, allowed)?;
        match extra.first() {
            Some((k, _)) => Err(bad_request(&format!(
                "unknown query parameter {:?}: this route accepts {}",
                k.chars().take(40).collect::<String>(),
                allowed.join(", ")
            ))),
            None => Ok(q),
        }
    }

    /// As [`Query::parse`], but names outside `allowed` are returned for
    /// the caller to judge (property filters name queryables).
    fn parse_open(
        raw: Option<&str>,
        allowed: &[&str],
    ) -> Result<(Self, Vec<(String, String)>), Response> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY {
            return Err(bad_request(&format!(
                "the query string is over {MAX_QUERY} bytes"
            )));
        }
        let mut out = HashMap::new();
        let mut extra: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let max = if k == "filter" { MAX_FILTER } else { 256 };
            if v.len() > max {
                return Err(bad_request(&format!("parameter {k} is over {max} bytes")));
            }
            if !allowed.contains(&k.as_ref()) {
                if k.len() > 128 || extra.iter().any(|(e, _)| *e == k) {
                    return Err(bad_request(&format!(
                        "parameter {:?} is too long or given twice",
                        k.chars().take(40).collect::<String>()
                    )));
                }
                extra.push((k.to_string(), v.to_string()));
                continue;
            }
            if out.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad_request(&format!("parameter {k} is given twice")));
            }
        }
        Ok((Self(out), extra))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn u64_in(&self, k: &str, default: u64, min: u64, max: u64) -> Result<u64, Response> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(bad_request(&format!(
                    "{k} must be an integer from {min} to {max}, got {:?}",
                    v.chars().take(40).collect::<String>()
                ))),
            },
        }
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

/// The answer's format on a route whose only parameter is `f`: the query
/// checked first (an unknown parameter is a 400 naming it), then
/// `f=json|html`, else the Accept header. `Html(true)`: the HTML view.
pub(super) struct Html(pub bool);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Html {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Response> {
        let q = Query::parse(parts.uri.query(), &["f"])?;
        q.wants_html(&parts.headers).map(Html)
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

/// The answer for a view that cannot be read now.
fn read_error(e: &ReadError) -> Response {
    match e {
        ReadError::Unavailable(why) => retry_later(why),
    }
}

pub(super) fn retry_later(why: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", why);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("2"),
    );
    r
}

/// Looks up a served release and asks the policy; `Err` is the answer.
/// The decision layer's work ([`crate::layers::decide`]).
pub(crate) fn granted(
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
            Ok(v) => Ok((rel, g, v)),
            // Said only now, to a caller the policy allowed.
            Err(e @ ViewError::Pending) => Err(with_note(retry_later(&e.to_string()), g.note)),
            Err(ViewError::Unservable(why)) => Err(with_note(
                error(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", &why),
                g.note,
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

/// The URLs a page's map draws from: the configured basemap's TileJSON
/// (unless the page is the basemap's own), and the page's own answer.
fn map_spec(
    st: &AppState,
    id: &str,
    items: Option<String>,
    tiles: bool,
    bounds: Option<[f64; 4]>,
) -> html::MapSpec {
    let b = base(st);
    let tilejson = |c: &str| format!("{b}/collections/{c}/tiles/WebMercatorQuad/tilejson.json");
    let basemap = st.config.basemap.as_deref().filter(|m| *m != id);
    html::MapSpec {
        base_tiles: basemap.map(tilejson),
        tiles: tiles.then(|| tilejson(id)),
        items,
        // A collection's tiles hold one layer, named after it (`tile`).
        base_layer: basemap.map(str::to_owned),
        layer: Some(id.to_owned()),
        bounds,
    }
}

fn base(st: &AppState) -> &str {
    st.config.base_url.trim_end_matches('/')
}

fn json_answer(status: StatusCode, ctype: &'static str, v: &Value, n: AuditNote) -> Response {
    with_note(bytes_response(status, ctype, v.to_string().into_bytes()), n)
}

#[utoipa::path(get, path = "/", tag = "OGC API - Features",
    responses((status = 200, description = "Landing page (JSON or HTML)")))]
pub(crate) async fn landing(State(st): State<Arc<AppState>>, Html(as_html): Html) -> Response {
    let b = base(&st);
    let doc = json!({
        "title": "KFM governed API",
        "description": "Kansas Frontier Matrix: governed geospatial datasets. Every answer is decided by the pinned policy and recorded in the audit ledger.",
        "links": [
            {"rel": "self", "type": JSON, "href": format!("{b}/")},
            {"rel": "alternate", "type": "text/html", "href": format!("{b}/?f=html")},
            {"rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.0", "title": "OpenAPI 3.0", "href": format!("{b}/openapi-3.0.json")},
            {"rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.1", "title": "OpenAPI 3.1", "href": format!("{b}/openapi.json")},
            {"rel": "conformance", "type": JSON, "href": format!("{b}/conformance")},
            {"rel": "data", "type": JSON, "href": format!("{b}/collections")},
            {"rel": "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes", "type": JSON, "href": format!("{b}/tileMatrixSets")},
            {"rel": "http://www.w3.org/ns/dcat#Catalog", "type": "application/ld+json", "href": format!("{b}/catalog")}
        ]
    });
    if as_html {
        with_note(html::landing(b, &st.releases.all().len()), note("none"))
    } else {
        json_answer(StatusCode::OK, JSON, &doc, note("none"))
    }
}

#[utoipa::path(get, path = "/conformance", tag = "OGC API - Features",
    responses((status = 200, description = "Conformance classes")))]
pub(crate) async fn conformance() -> Response {
    let doc = json!({"conformsTo": [
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
        "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
        "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
        "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
        "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
        "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
        "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
        "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
        "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
        "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
        "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
        "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
        "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
        "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
        "http://www.opengis.net/spec/cql2/1.0/conf/property-property",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt"
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
        json!({"rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables", "type": "application/schema+json", "title": "Queryables", "href": format!("{b}/collections/{id}/queryables")}),
        json!({"rel": "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector", "type": JSON, "title": "Vector tiles", "href": format!("{b}/collections/{id}/tiles")}),
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
        "crs": kfm_query::crs::OFFERED,
        "storageCrs": kfm_query::crs::CRS84,
        "links": links,
    });
    // The extent of what *this caller* sees: for generalised data the
    // precise extent would itself reveal locations.
    if let Some(e) = view.extent {
        doc["extent"] = json!({"spatial": {"bbox": [e], "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}});
    }
    with_governance(doc, rel, g, view)
}

#[utoipa::path(get, path = "/collections", tag = "OGC API - Features",
    responses((status = 200, description = "The collections this caller may read")))]
pub(crate) async fn collections(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Html(as_html): Html,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
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
    if as_html {
        return with_note(html::collections(b, &shown), n);
    }
    json_answer(
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
    )
}

#[utoipa::path(get, path = "/collections/{collection_id}", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "One collection"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)")))]
pub(crate) async fn collection(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path(id): Path<String>,
    Html(as_html): Html,
) -> Response {
    if as_html {
        return with_note(
            html::collection(
                base(&st),
                &rel,
                &g,
                &view,
                view.extent,
                map_spec(&st, &id, None, true, view.extent),
            ),
            g.note,
        );
    }
    let doc = collection_doc(&st, &rel, &g, &view);
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}

pub(crate) async fn fallback() -> Response {
    not_found(note("none"))
}

impl IntoResponse for crate::auth::AuthError {
    fn into_response(self) -> Response {
        error(StatusCode::UNAUTHORIZED, "Unauthorized", self.0)
    }
}

/// The links of a body as an RFC 8288 `Link` header, for clients that read
/// links from headers rather than bodies (the OGC conformance suites find
/// an answer's media types this way). A comma or semicolon in a target is
/// percent-encoded: the same URI to a server, and a header that simple
/// parsers, which split on both, still read right. `None` if a target
/// cannot be a header value.
pub(super) fn link_header(links: &[Value]) -> Option<HeaderValue> {
    let mut out = String::new();
    for l in links {
        let (Some(href), Some(rel)) = (l["href"].as_str(), l["rel"].as_str()) else {
            continue;
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push('<');
        out.push_str(&href.replace(',', "%2C").replace(';', "%3B"));
        out.push_str(">; rel=\"");
        out.push_str(rel);
        out.push('"');
        if let Some(t) = l["type"].as_str() {
            out.push_str("; type=\"");
            out.push_str(t);
            out.push('"');
        }
    }
    HeaderValue::from_str(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_header_survives_commas_and_refuses_a_broken_target() {
        let links = [
            json!({"rel": "self", "type": GEOJSON, "href": "http://h/c/x/items?bbox=-98,38,-97,39;x"}),
            json!({"rel": "next", "href": "http://h/c/x/items?cursor=a"}),
        ];
        let h = link_header(&links).unwrap();
        assert_eq!(
            h.to_str().unwrap(),
            "<http://h/c/x/items?bbox=-98%2C38%2C-97%2C39%3Bx>; rel=\"self\"; type=\"application/geo+json\", \
             <http://h/c/x/items?cursor=a>; rel=\"next\""
        );
        // A target a client controls cannot split the header into another.
        let hostile = [json!({"rel": "self", "href": "http://h/\r\nSet-Cookie: a=b"})];
        assert!(link_header(&hostile).is_none());
    }
}
