//! Exports: a whole dataset as this caller may see it (GeoJSON or CSV),
//! license and attribution embedded, streamed in chunks: memory does not
//! grow with the export, and when the client goes away its body is dropped
//! and the writing stops.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{GEOJSON, Query, bad_request, governance, granted, with_note};
use crate::auth::Principal;
use crate::enforce::Grant;
use crate::releases::{Release, View};
use crate::{AppState, error};

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
        let mut out = Value::Object(head).to_string().into_bytes();
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
                        // A geometry that cannot be written stops the export
                        // with an error: never a row with an empty geometry.
                        match f.geometry.as_ref().map(serde_json::to_string) {
                            Some(Ok(g)) => row[3] = g,
                            Some(Err(e)) => return Some((Err(std::io::Error::other(e)), None)),
                            None => {}
                        }
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
