//! OGC API – Tiles (vector): the WebMercatorQuad tile matrix set, each
//! collection's tileset list and metadata, TileJSON for web maps, and the
//! tiles themselves (Mapbox Vector Tiles).
//!
//! A tile is a governed read like a page of items: the same decision, the
//! same view (so a caller not approved for a restricted dataset is drawn
//! its generalised layer only), the same audit record per request. The
//! metadata says what the items say: label, license, attribution, and
//! whether coordinates were generalised.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use kfm_tiles::{ID_KEY, MAX_ZOOM, TMS, TMS_URI, TileId};
use serde_json::{Value, json};

use super::{JSON, Query, bad_request, base, json_answer, read_error, with_note};
use crate::enforce::Grant;
use crate::layers::Decided;
use crate::releases::{Release, View};
use crate::{AppState, bytes_response};

const MVT: &str = "application/vnd.mapbox-vector-tile";
/// The zoom beyond which a map draws the deepest tile larger (TileJSON's
/// `maxzoom`); tiles are served to [`MAX_ZOOM`] all the same.
const MAP_MAXZOOM: u8 = 16;

/// Escapes text for the places a web map renders as HTML (TileJSON's
/// `attribution` is HTML by its specification): a dataset's attribution
/// is data, never markup.
fn html_text(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// The attribution a map shows: the grant's text when the policy attaches
/// one, else the license.
fn attribution(rel: &Release, g: &Grant) -> String {
    match &g.attribution {
        Some((lic, text)) => format!("{text} ({lic})"),
        None => format!("{} ({})", rel.title, rel.manifest.license),
    }
}

fn template(b: &str, id: &str) -> String {
    format!("{b}/collections/{id}/tiles/{TMS}/{{z}}/{{y}}/{{x}}")
}

#[utoipa::path(get, path = "/tileMatrixSets", tag = "OGC API - Tiles",
    responses((status = 200, description = "The tile matrix sets tiles are served in (WebMercatorQuad)", content_type = "application/json"),
        (status = 400, description = "Unknown parameter")))]
pub(crate) async fn tile_matrix_sets(
    State(st): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = Query::parse(q.as_deref(), &["f"]) {
        return r;
    }
    let b = base(&st);
    let doc = json!({"tileMatrixSets": [{
        "id": TMS, "title": "Google Maps Compatible for the World", "uri": TMS_URI,
        "links": [{"rel": "self", "type": JSON, "href": format!("{b}/tileMatrixSets/{TMS}")}]
    }]});
    json_answer(StatusCode::OK, JSON, &doc, super::note("none"))
}

#[utoipa::path(get, path = "/tileMatrixSets/WebMercatorQuad", tag = "OGC API - Tiles",
    responses((status = 200, description = "The WebMercatorQuad tile matrix set (OGC 2D Tile Matrix Set 2.0)", content_type = "application/json"),
        (status = 400, description = "Unknown parameter")))]
pub(crate) async fn web_mercator_quad(RawQuery(q): RawQuery) -> Response {
    if let Err(r) = Query::parse(q.as_deref(), &["f"]) {
        return r;
    }
    const HALF: f64 = 20_037_508.342_789_244;
    // Scale denominators for 256-pixel tiles at 0.28 mm per pixel.
    let matrices: Vec<Value> = (0..=MAX_ZOOM)
        .map(|z| {
            let n = 1u64 << z;
            let cell = 2.0 * HALF / 256.0 / n as f64;
            json!({
                "id": z.to_string(), "scaleDenominator": cell / 0.00028, "cellSize": cell,
                "cornerOfOrigin": "topLeft", "pointOfOrigin": [-HALF, HALF],
                "tileWidth": 256, "tileHeight": 256, "matrixWidth": n, "matrixHeight": n
            })
        })
        .collect();
    let doc = json!({
        "id": TMS, "title": "Google Maps Compatible for the World", "uri": TMS_URI,
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857", "orderedAxes": ["E", "N"],
        "wellKnownScaleSet": "http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible",
        "tileMatrices": matrices
    });
    json_answer(StatusCode::OK, JSON, &doc, super::note("none"))
}

/// The tileset as this caller sees it: metadata shared by the OGC answer
/// and TileJSON.
fn tileset(st: &AppState, rel: &Release, g: &Grant, view: &View) -> Value {
    let b = base(st);
    let id = &rel.dataset;
    let mut doc = json!({
        "title": rel.title,
        "description": rel.description,
        "dataType": "vector",
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "tileMatrixSetURI": TMS_URI,
        "attribution": html_text(&attribution(rel, g)),
        "layers": [{
            "id": id, "dataType": "vector",
            "propertiesSchema": view.queryables.json_schema(&format!("{b}/collections/{id}/queryables"), &rel.title, view.temporal.as_deref()),
            "description": format!("Every feature carries its KFM id as the {ID_KEY} property")
        }],
        "links": [
            {"rel": "self", "type": JSON, "href": format!("{b}/collections/{id}/tiles/{TMS}")},
            {"rel": "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", "type": JSON, "href": format!("{b}/tileMatrixSets/{TMS}")},
            {"rel": "item", "type": MVT, "templated": true, "href": template(b, id)},
            {"rel": "describedby", "type": JSON, "title": "TileJSON", "href": format!("{b}/collections/{id}/tiles/{TMS}/tilejson.json")},
            {"rel": "collection", "type": JSON, "href": format!("{b}/collections/{id}")}
        ]
    });
    if let Some(e) = view.extent {
        doc["boundingBox"] = json!({
            "lowerLeft": [e[0], e[1]], "upperRight": [e[2], e[3]],
            "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
        });
    }
    super::with_governance(doc, rel, g, view)
}

#[utoipa::path(get, path = "/collections/{collection_id}/tiles", tag = "OGC API - Tiles",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "The collection's tilesets (vector, WebMercatorQuad)", content_type = "application/json"),
        (status = 400, description = "Malformed id or unknown parameter"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn tilesets(
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
    let mut ts = tileset(&st, &rel, &g, &view);
    if let Some(m) = ts.as_object_mut() {
        m.remove("layers");
    }
    let b = base(&st);
    let doc = json!({
        "links": [{"rel": "self", "type": JSON, "href": format!("{b}/collections/{id}/tiles")}],
        "tilesets": [ts]
    });
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}

#[utoipa::path(get, path = "/collections/{collection_id}/tiles/WebMercatorQuad", tag = "OGC API - Tiles",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "Tileset metadata: layers, bounding box as served to this caller, attribution, policy members", content_type = "application/json"),
        (status = 400, description = "Malformed id or unknown parameter"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn tileset_metadata(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = Query::parse(q.as_deref(), &["f"]) {
        return r;
    }
    let doc = tileset(&st, &rel, &g, &view);
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}

#[utoipa::path(get, path = "/collections/{collection_id}/tiles/WebMercatorQuad/tilejson.json", tag = "OGC API - Tiles",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "TileJSON 3.0.0 for web maps (MapLibre, QGIS): tile URL template, bounds as served to this caller, vector layer fields, attribution", content_type = "application/json"),
        (status = 400, description = "Malformed id or unknown parameter"),
        (status = 404, description = "No such collection, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn tilejson(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = Query::parse(q.as_deref(), &[]) {
        return r;
    }
    let b = base(&st);
    let mut fields = serde_json::Map::new();
    fields.insert(ID_KEY.into(), json!("KFM feature id"));
    for n in view.queryables.names() {
        if let Some(k) = view.queryables.kind(n) {
            fields.insert(n.to_owned(), json!(k.as_str()));
        }
    }
    let mut doc = json!({
        "tilejson": "3.0.0",
        "name": rel.title,
        "description": rel.description,
        "version": "1.0.0",
        "attribution": html_text(&attribution(&rel, &g)),
        "scheme": "xyz",
        "tiles": [template(b, &id)],
        "minzoom": 0,
        "maxzoom": MAP_MAXZOOM,
        "vector_layers": [{"id": id, "fields": fields, "minzoom": 0, "maxzoom": MAP_MAXZOOM}]
    });
    if let Some(e) = view.extent {
        doc["bounds"] = json!(e);
    }
    json_answer(
        StatusCode::OK,
        JSON,
        &super::with_governance(doc, &rel, &g, &view),
        g.note,
    )
}

#[utoipa::path(get, path = "/collections/{collection_id}/tiles/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}", tag = "OGC API - Tiles",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("tileMatrix" = u32, Path, description = "Zoom level, 0-24"),
        ("tileRow" = u32, Path, description = "Row from the top, 0 to 2^zoom - 1"),
        ("tileCol" = u32, Path, description = "Column from the left, 0 to 2^zoom - 1")),
    responses((status = 200, description = "A Mapbox Vector Tile with one layer named after the collection, drawn from the features this caller may see (generalised for a caller not approved)", content_type = "application/vnd.mapbox-vector-tile"),
        (status = 204, description = "Nothing of the collection falls in this tile"),
        (status = 400, description = "Malformed zoom, row, column or id, or an unknown parameter"),
        (status = 404, description = "No such collection or tile, or not available to this caller (same answer)"),
        (status = 503, description = "Not ready, or the projection of this version is not loaded yet")))]
pub(crate) async fn tile(
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path((_, z, y, x)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = Query::parse(q.as_deref(), &["f"]) {
        return r;
    }
    let num = |what: &str, v: &str| {
        v.parse::<u32>().map_err(|_| {
            bad_request(&format!(
                "{what} must be a whole number, got {:?}",
                v.chars().take(20).collect::<String>()
            ))
        })
    };
    let t = match (
        num("tileMatrix", &z),
        num("tileRow", &y),
        num("tileCol", &x),
    ) {
        (Ok(z), Ok(y), Ok(x)) => match TileId::new(z, x, y) {
            Ok(t) => t,
            Err(e) => return bad_request(&e.to_string()),
        },
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let bytes = match view.tile(&rel.dataset, t).await {
        Ok(b) => b,
        Err(e) => return with_note(read_error(&e), g.note),
    };
    let mut r = if bytes.is_empty() {
        let mut r = bytes_response(StatusCode::NO_CONTENT, MVT, bytes::Bytes::new());
        r.headers_mut().remove(header::CONTENT_TYPE);
        r
    } else {
        bytes_response(StatusCode::OK, MVT, bytes)
    };
    // A tile is what this release looks like to this caller's class; the
    // next promotion changes it, so a browser asks again each time.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_note(r, g.note)
}
