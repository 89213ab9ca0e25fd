//! Exports: a whole dataset as this caller may see it (GeoJSON or CSV),
//! license and attribution embedded, streamed in chunks: memory does not
//! grow with the export, and when the client goes away its body is dropped
//! and the writing stops.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::RawQuery;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{GEOJSON, Query, bad_request, governance, with_note};
use crate::enforce::Grant;
use crate::layers::Decided;
use crate::releases::{Release, View};

#[utoipa::path(get, path = "/collections/{collection_id}/export", tag = "Exports",
    params(("collection_id" = String, Path, description = "Dataset id"),
        ("format" = Option<String>, Query, description = "geojson (default) or csv")),
    responses((status = 200, description = "The whole dataset as this caller may see it, license and attribution embedded; answered only once the audit record is durable"),
        (status = 404, description = "Not found, not available, or not exportable (same answer)")))]
pub(crate) async fn export(
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
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
    // Streamed: memory does not grow with the export, and when the
    // client goes away its body is dropped and the writing stops.
    let mut r = if csv {
        let mut r = Response::new(export_csv(rel.clone(), &g, view.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        r
    } else {
        let mut head = serde_json::Map::new();
        head.insert("type".into(), json!("FeatureCollection"));
        head.extend(governance(&rel, &g, &view));
        head.insert("kfm:manifest_digest".into(), json!(rel.manifest_digest));
        let mut out = Value::Object(head).to_string().into_bytes();
        out.pop();
        out.extend_from_slice(b",\"features\":[");
        let v = view.clone();
        // State: the last position sent (-1 before the first), the head
        // still to send, whether a feature went out, and whether it ended.
        let chunks = futures::stream::unfold(
            (-1i64, Some(Bytes::from(out)), false, false),
            move |(at, head, any, done)| {
                let v = v.clone();
                async move {
                    if done {
                        return None;
                    }
                    if let Some(h) = head {
                        return Some((Ok::<_, std::io::Error>(h), (at, None, any, false)));
                    }
                    let batch = match v.batch_json(at, EXPORT_CHUNK).await {
                        Ok(b) => b,
                        Err(e) => {
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (at, None, any, true),
                            ));
                        }
                    };
                    let Some(last) = batch.last().map(|(o, _)| *o) else {
                        return Some((Ok(Bytes::from_static(b"]}")), (at, None, any, true)));
                    };
                    let mut buf = Vec::new();
                    for (n, (_, f)) in batch.iter().enumerate() {
                        if any || n > 0 {
                            buf.push(b',');
                        }
                        buf.extend_from_slice(f);
                    }
                    Some((Ok(Bytes::from(buf)), (last, None, true, false)))
                }
            },
        );
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

/// Features per chunk of a streamed export (and per read of a projected
/// table).
const EXPORT_CHUNK: usize = 1024;

/// CSV with the license and attribution as leading `#` comment lines (read
/// them with `comment='#'` in pandas, or skip 3 header lines in QGIS).
/// Points become `longitude,latitude`; other geometries a GeoJSON column.
///
/// Streamed in chunks of [`EXPORT_CHUNK`] rows, in time linear in its size:
/// the columns are the view's queryables (every property, in the order
/// first seen), and each row places a feature's properties by column index.
fn export_csv(rel: Arc<Release>, g: &Grant, view: Arc<View>) -> Body {
    let mut head = Vec::new();
    head.extend_from_slice(format!("# dataset: {}\n", rel.version_id).as_bytes());
    head.extend_from_slice(format!("# license: {}\n", rel.manifest.license).as_bytes());
    if let Some((_, text)) = &g.attribution {
        head.extend_from_slice(format!("# attribution: {}\n", text.replace('\n', " ")).as_bytes());
    }
    if view.generalized {
        head.extend_from_slice(b"# coordinates generalized: see dataGeneralizations and coordinateUncertaintyInMeters\n");
    }
    let keys: Vec<String> = view.queryables.names().map(str::to_owned).collect();
    let column: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    let mut w = csv::Writer::from_writer(head);
    let header = w.write_record(
        ["id", "longitude", "latitude", "geometry"]
            .into_iter()
            .chain(keys.iter().map(String::as_str)),
    );
    let head = header
        .map_err(|e| e.to_string())
        .and_then(|()| w.into_inner().map_err(|e| e.to_string()));
    let width = 4 + keys.len();
    let column = Arc::new(column);
    let first = head.map(Bytes::from).map_err(std::io::Error::other);
    let chunks = futures::stream::unfold((-1i64, Some(first), false), move |(at, head, done)| {
        let (view, column) = (view.clone(), column.clone());
        async move {
            if done {
                return None;
            }
            if let Some(h) = head {
                let failed = h.is_err();
                return Some((h, (at, None, failed)));
            }
            let batch = match view.batch(at, EXPORT_CHUNK).await {
                Ok(b) => b,
                Err(e) => {
                    return Some((Err(std::io::Error::other(e.to_string())), (at, None, true)));
                }
            };
            let last = batch.last().map(|(o, _)| *o)?;
            match csv_rows(&batch, &column, width) {
                Ok(b) => Some((Ok(Bytes::from(b)), (last, None, false))),
                Err(e) => Some((Err(e), (last, None, true))),
            }
        }
    });
    Body::from_stream(chunks)
}

/// One chunk of CSV rows.
fn csv_rows(
    batch: &[(i64, geojson::Feature)],
    column: &HashMap<String, usize>,
    width: usize,
) -> Result<Vec<u8>, std::io::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut row = vec![String::new(); width];
    for (_, f) in batch {
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
                if let Some(g) = f.geometry.as_ref() {
                    row[3] = serde_json::to_string(g).map_err(std::io::Error::other)?;
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
        w.write_record(&row).map_err(std::io::Error::other)?;
    }
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}
