//! Features: `items` (paged, filtered, sorted), one `item`, and the
//! `queryables` that say what a collection can be filtered and sorted by.
//!
//! Parameters are parsed into one typed query (`kfm-query`) against the
//! queryables of the view the caller is granted, so a filter can name only
//! what this caller may see, and is answered the same way by either
//! backend. Pages are keyset-paged: the `next` link carries a cursor, so
//! page 1,000 costs what page 1 costs. `numberMatched` is given only when
//! nothing filters the collection (then it is the layer's row count, known
//! without counting); with a filter it is omitted, as OGC API – Features
//! allows, rather than paid for with a count of every match.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use kfm_query::filter::{Context, FilterCrs};
use kfm_query::{Bbox, Crs, Cursor, Filter, FilterLang, QueryError, Search, SortKeys};
use serde_json::{Value, json};

use super::{
    GEOJSON, JSON, Query, bad_request, base, check_id, governance, json_answer, read_error,
    with_note,
};
use crate::enforce::Grant;
use crate::layers::Decided;
use crate::releases::{Release, View};
use crate::view::{CachedPage, ItemQuery};
use crate::{AppState, bytes_response, html, not_found};

const MAX_LIMIT: u64 = 10_000;
const DEFAULT_LIMIT: u64 = 10;

/// The parameters `items` knows; any other name must be a queryable (a
/// property filter).
/// The OGC link relation of a collection's queryables (Features Part 3).
const QUERYABLES_REL: &str = "http://www.opengis.net/def/rel/ogc/1.0/queryables";

const ITEMS_PARAMS: &[&str] = &[
    "bbox",
    "limit",
    "offset",
    "cursor",
    "f",
    "datetime",
    "filter",
    "filter-lang",
    "filter-crs",
    "sortby",
    "q",
    "crs",
    "bbox-crs",
];

fn query_error(e: &QueryError) -> Response {
    bad_request(&e.to_string())
}

/// What a request asked, parsed against the view it is granted.
struct Asked {
    query: ItemQuery,
    /// Whether any condition filters the collection.
    filtered: bool,
    /// The query string of this page's links (without `cursor`/`offset`).
    canonical: Vec<(String, String)>,
}

fn ask(q: &Query, extras: &[(String, String)], view: &View, html: bool) -> Result<Asked, Response> {
    let limit = q.u64_in("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let offset = q.u64_in("offset", 0, 0, 1_000_000_000)?;
    let mut parts = Vec::new();
    let mut canonical = vec![("limit".to_owned(), limit.to_string())];
    let mut keep = |k: &str, v: &str| canonical.push((k.to_owned(), v.to_owned()));
    let bbox_crs = Crs::parse("bbox-crs", q.get("bbox-crs")).map_err(|e| query_error(&e))?;
    if let Some(b) = q.get("bbox") {
        parts.push(Filter::Bbox(
            Bbox::parse_in(b, bbox_crs).map_err(|e| query_error(&e))?,
        ));
        keep("bbox", b);
        if let Some(c) = q.get("bbox-crs") {
            keep("bbox-crs", c);
        }
    }
    if let Some(c) = q.get("crs") {
        keep("crs", c);
    }
    if let Some(d) = q.get("datetime") {
        let i = kfm_query::time::datetime_param(d).map_err(|e| query_error(&e))?;
        if view.temporal.is_none() {
            // A collection without a time property: its features have no
            // time, so none is within any interval (SQL's unknown).
            parts.push(Filter::Bool(false));
        } else {
            parts.push(Filter::datetime(i));
        }
        keep("datetime", d);
    }
    let lang = FilterLang::parse(q.get("filter-lang")).map_err(|e| query_error(&e))?;
    let crs = FilterCrs::parse(q.get("filter-crs")).map_err(|e| query_error(&e))?;
    if let Some(f) = q.get("filter") {
        let ctx = Context {
            queryables: &view.queryables,
            temporal: view.temporal.as_deref(),
            crs,
        };
        parts.push(Filter::parse(f, lang, &ctx).map_err(|e| query_error(&e))?);
        keep("filter", f);
        if let Some(l) = q.get("filter-lang") {
            keep("filter-lang", l);
        }
        if let Some(c) = q.get("filter-crs") {
            keep("filter-crs", c);
        }
    }
    let mut extras: Vec<&(String, String)> = extras.iter().collect();
    extras.sort();
    for (k, v) in extras {
        parts.push(Filter::property(k, v, &view.queryables).map_err(|e| {
            if view.queryables.kind(k).is_none() {
                bad_request(&format!(
                    "unknown query parameter {:?}: items accepts {} and this collection's queryables (see its /queryables)",
                    k.chars().take(40).collect::<String>(),
                    ITEMS_PARAMS.join(", ")
                ))
            } else {
                query_error(&e)
            }
        })?);
        keep(k, v);
    }
    if let Some(s) = q.get("q") {
        let search = Search::parse(s).map_err(|e| query_error(&e))?;
        let allowed = view.queryables.names().map(str::to_owned).collect();
        parts.push(Filter::Terms { search, allowed });
        keep("q", s);
    }
    let sort = match q.get("sortby") {
        Some(s) => SortKeys::parse(s, &view.queryables).map_err(|e| query_error(&e))?,
        None => SortKeys::default(),
    };
    if !sort.is_empty() {
        keep("sortby", &sort.text());
    }
    let after = match q.get("cursor") {
        Some(_) if q.get("offset").is_some() => {
            return Err(bad_request("give cursor or offset, not both"));
        }
        Some(c) => Some(Cursor::decode(c, &sort).map_err(|e| query_error(&e))?),
        None => None,
    };
    let filtered = !parts.is_empty();
    Ok(Asked {
        query: ItemQuery {
            filter: Filter::all(parts),
            sort,
            after,
            offset,
            limit,
            features: html,
        },
        filtered,
        canonical,
    })
}

fn query_string(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[utoipa::path(get, path = "/collections/{collection_id}/items", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("bbox" = Option<String>, Query, description = "minlon,minlat,maxlon,maxlat (CRS84, or as bbox-crs says); features whose bounding box, as served to this caller, meets it"),
        ("bbox-crs" = Option<String>, Query, description = "CRS of bbox: http://www.opengis.net/def/crs/OGC/1.3/CRS84 (default), http://www.opengis.net/def/crs/EPSG/0/4326 (latitude first) or http://www.opengis.net/def/crs/EPSG/0/3857"),
        ("crs" = Option<String>, Query, description = "CRS of the answer's positions (see Content-Crs): CRS84 (default), EPSG:4326 (latitude first) or EPSG:3857, by their OGC URIs"),
        ("datetime" = Option<String>, Query, description = "An RFC 3339 instant or date, or an interval start/end with open ends as '..'; filters on the collection's time property (a collection without one matches nothing)"),
        ("filter" = Option<String>, Query, description = "A CQL2 filter over this collection's queryables (see /queryables)"),
        ("filter-lang" = Option<String>, Query, description = "cql2-text (default) or cql2-json"),
        ("filter-crs" = Option<String>, Query, description = "CRS of the filter's geometries: http://www.opengis.net/def/crs/OGC/1.3/CRS84 (default) or http://www.opengis.net/def/crs/EPSG/0/4326"),
        ("sortby" = Option<String>, Query, description = "Comma-separated queryables, each with an optional + (ascending) or - (descending); missing values last"),
        ("q" = Option<String>, Query, description = "Search words in the properties this caller may see; commas separate alternatives"),
        ("limit" = Option<u64>, Query, description = "1-10000, default 10"),
        ("cursor" = Option<String>, Query, description = "Where a page starts, as the `next` link gives it"),
        ("offset" = Option<u64>, Query, description = "Features to skip (cursor is cheaper for deep pages)"),
        ("f" = Option<String>, Query, description = "json or html")),
    responses((status = 200, description = "GeoJSON FeatureCollection with license, attribution and generalisation notices", content_type = "application/geo+json"),
        (status = 400, description = "Malformed or unknown parameter, filter, property or function (the message names it)"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn items(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (q, extras) = match Query::parse_open(raw.as_deref(), ITEMS_PARAMS) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let html = match q.wants_html(&headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    if let Err(r) =
        q.u64_in("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            .and(q.u64_in("offset", 0, 0, 1_000_000_000))
    {
        return r;
    }
    let crs = match Crs::parse("crs", q.get("crs")) {
        Ok(c) => c,
        Err(e) => return query_error(&e),
    };
    // The page's bytes depend on the view (which release, which shape),
    // the attribution this grant attaches, and the query as sent; nothing
    // else. Only answered pages are kept, so a hit was a valid query.
    let page_key = {
        let (lic, text) = g
            .attribution
            .as_ref()
            .map_or(("", ""), |(l, t)| (l.as_str(), t.as_str()));
        format!("{}\u{1f}{lic}\u{1f}{text}", raw.as_deref().unwrap_or(""))
    };
    if !html && let Some(page) = view.pages.get(&page_key) {
        return with_note(
            with_link(
                content_crs(bytes_response(StatusCode::OK, GEOJSON, page.body), crs),
                page.link,
            ),
            g.note,
        );
    }
    let asked = match ask(&q, &extras, &view, html) {
        Ok(a) => a,
        Err(r) => return with_note(r, g.note),
    };
    let b = base(&st);
    let page_query = {
        let mut p = asked.canonical.clone();
        if let Some(c) = q.get("cursor") {
            p.push(("cursor".into(), c.into()));
        } else if asked.query.offset > 0 {
            p.push(("offset".into(), asked.query.offset.to_string()));
        }
        query_string(&p)
    };
    let page = match view.page(&asked.query).await {
        Ok(p) => p,
        Err(e) => return with_note(read_error(&e), g.note),
    };
    let next_href = page.next.as_ref().map(|c| {
        let mut p = asked.canonical.clone();
        p.push(("cursor".into(), c.encode()));
        format!("{b}/collections/{id}/items?{}", query_string(&p))
    });
    let matched = (!asked.filtered).then_some(view.rows);
    if html {
        let feats: Vec<&geojson::Feature> = page.features.iter().collect();
        return with_note(
            html::items(
                b,
                &rel,
                &g,
                &view,
                &feats,
                matched,
                next_href.map(|h| h.replacen("/items?", "/items?f=html&", 1)),
                super::map_spec(
                    &st,
                    &id,
                    Some(format!("{b}/collections/{id}/items?{page_query}")),
                    false,
                    // The map fits the page's own features once it has
                    // them; opening elsewhere first would cost a round of
                    // tiles that are never drawn.
                    None,
                ),
            ),
            g.note,
        );
    }
    let self_href = format!("{b}/collections/{id}/items?{page_query}");
    let mut links = vec![
        json!({"rel": "self", "type": GEOJSON, "href": self_href}),
        json!({"rel": "alternate", "type": "text/html", "href": format!("{self_href}&f=html")}),
        json!({"rel": "collection", "type": JSON, "href": format!("{b}/collections/{id}")}),
        json!({"rel": QUERYABLES_REL, "type": "application/schema+json", "href": format!("{b}/collections/{id}/queryables")}),
    ];
    if let Some(n) = next_href {
        links.push(json!({"rel": "next", "type": GEOJSON, "href": n}));
    }
    let features = match in_crs(page.json, crs) {
        Ok(f) => f,
        Err(r) => return with_note(r, g.note),
    };
    let link = super::link_header(&links);
    let out = feature_collection(&rel, &g, &view, matched, links, &features);
    view.pages.put(
        page_key,
        CachedPage {
            body: out.clone(),
            link: link.clone(),
        },
    );
    with_note(
        with_link(
            content_crs(bytes_response(StatusCode::OK, GEOJSON, out), crs),
            link,
        ),
        g.note,
    )
}

/// The body's links also as a `Link` header.
fn with_link(mut r: Response, link: Option<HeaderValue>) -> Response {
    if let Some(l) = link {
        r.headers_mut().insert(header::LINK, l);
    }
    r
}

/// Features' bytes with their positions in `crs` (as stored for CRS84).
fn in_crs(features: Vec<Bytes>, crs: Crs) -> Result<Vec<Bytes>, Response> {
    if crs == Crs::Crs84 {
        return Ok(features);
    }
    features
        .into_iter()
        .map(|b| {
            let mut f: Value = serde_json::from_slice(&b).map_err(|_| {
                super::retry_later("a feature could not be transformed; retry shortly")
            })?;
            if let Some(g) = f.get_mut("geometry") {
                crs.transform_geometry(g);
            }
            Ok(Bytes::from(f.to_string()))
        })
        .collect()
}

/// `Content-Crs`, as OGC API – Features Part 2 asks of every answer with
/// positions.
fn content_crs(mut r: Response, crs: Crs) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("<{}>", crs.uri())) {
        r.headers_mut().insert("content-crs", v);
    }
    r
}

/// A FeatureCollection: the governance members, then the features' bytes.
fn feature_collection(
    rel: &Release,
    g: &Grant,
    view: &View,
    matched: Option<u64>,
    links: Vec<Value>,
    features: &[Bytes],
) -> Bytes {
    let mut head = serde_json::Map::new();
    head.insert("type".into(), json!("FeatureCollection"));
    if let Some(m) = matched {
        head.insert("numberMatched".into(), json!(m));
    }
    head.insert("numberReturned".into(), json!(features.len()));
    head.extend(governance(rel, g, view));
    head.insert("links".into(), Value::Array(links));
    let mut out = Value::Object(head).to_string().into_bytes();
    out.pop(); // the closing brace: features follow
    out.extend_from_slice(b",\"features\":[");
    let size: usize = features.iter().map(|f| f.len() + 1).sum();
    out.reserve(size + 2);
    for (n, f) in features.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(f);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

#[utoipa::path(get, path = "/collections/{collection_id}/items/{feature_id}", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("feature_id" = String, Path, description = "Feature id"),
        ("crs" = Option<String>, Query, description = "CRS of the answer's positions (see Content-Crs): CRS84 (default), EPSG:4326 or EPSG:3857, by their OGC URIs"),
        ("f" = Option<String>, Query, description = "json or html")),
    responses((status = 200, description = "One feature, as this caller may see it", content_type = "application/geo+json"),
        (status = 400, description = "Malformed id or parameter"),
        (status = 404, description = "No such feature, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn item(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path((id, fid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["f", "crs"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let crs = match Crs::parse("crs", q.get("crs")) {
        Ok(c) => c,
        Err(e) => return query_error(&e),
    };
    if let Err(r) = check_id("feature id", &fid) {
        return r;
    }
    let html = match q.wants_html(&headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let f = match view.feature(&fid).await {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(g.note),
        Err(e) => return with_note(read_error(&e), g.note),
    };
    let b = base(&st);
    if html {
        return with_note(
            html::items(
                b,
                &rel,
                &g,
                &view,
                &[&f],
                Some(1),
                None,
                super::map_spec(
                    &st,
                    &id,
                    Some(format!("{b}/collections/{id}/items/{fid}")),
                    false,
                    // The map fits the page's own features once it has
                    // them; opening elsewhere first would cost a round of
                    // tiles that are never drawn.
                    None,
                ),
            ),
            g.note,
        );
    }
    let mut doc = serde_json::to_value(&f).unwrap_or(Value::Null);
    if let Some(g) = doc.get_mut("geometry") {
        crs.transform_geometry(g);
    }
    let links = vec![
        json!({"rel": "self", "type": GEOJSON, "href": format!("{b}/collections/{id}/items/{fid}")}),
        json!({"rel": "alternate", "type": "text/html", "href": format!("{b}/collections/{id}/items/{fid}?f=html")}),
        json!({"rel": "collection", "type": JSON, "href": format!("{b}/collections/{id}")}),
        json!({"rel": "describedby", "type": JSON, "title": "Evidence", "href": format!("{b}/evidence/{}/{fid}", rel.version_id)}),
    ];
    let link = super::link_header(&links);
    if let Value::Object(m) = &mut doc {
        m.extend(governance(&rel, &g, &view));
        m.insert("links".into(), Value::Array(links));
    }
    with_link(
        content_crs(json_answer(StatusCode::OK, GEOJSON, &doc, g.note), crs),
        link,
    )
}

#[utoipa::path(get, path = "/collections/{collection_id}/queryables", tag = "OGC API - Features",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "JSON Schema of the properties this caller may filter and sort by", content_type = "application/schema+json"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn queryables(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = Query::parse(q.as_deref(), &["f"]) {
        return r;
    }
    let b = base(&st);
    let doc = view.queryables.json_schema(
        &format!("{b}/collections/{id}/queryables"),
        &rel.title,
        view.temporal.as_deref(),
    );
    json_answer(StatusCode::OK, "application/schema+json", &doc, g.note)
}
