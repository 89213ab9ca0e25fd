//! The spatially indexed form of a processed dataset: FlatGeobuf with its
//! packed Hilbert R-tree, written by the `flatgeobuf` crate.
//!
//! Columns are declared up front from every feature's properties (sorted by
//! name, typed by what the values hold) so the file does not depend on which
//! feature happened to come first, and the feature id travels in a `kfm_id`
//! column so a bbox hit maps back to the GeoJSON feature.

use std::collections::BTreeMap;

use flatgeobuf::geozero::{ColumnValue, PropertyProcessor};
use flatgeobuf::{ColumnType, FgbCrs, FgbWriter, FgbWriterOptions, GeometryType};
use geojson::{Feature, JsonValue};

use crate::normalize::id_string;

/// The column holding each feature's id.
pub const ID_COLUMN: &str = "kfm_id";

#[derive(Debug, thiserror::Error)]
#[error("cannot write FlatGeobuf: {0}")]
pub struct FgbError(String);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Long,
    Double,
    String,
    Json,
}

fn kind_of(v: &JsonValue) -> Option<Kind> {
    match v {
        JsonValue::Null => None,
        JsonValue::Bool(_) => Some(Kind::Bool),
        JsonValue::Number(n) if n.is_i64() => Some(Kind::Long),
        JsonValue::Number(_) => Some(Kind::Double),
        JsonValue::String(_) => Some(Kind::String),
        JsonValue::Array(_) | JsonValue::Object(_) => Some(Kind::Json),
    }
}

fn merge(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (x, y) if x == y => x,
        (Kind::Long, Kind::Double) | (Kind::Double, Kind::Long) => Kind::Double,
        _ => Kind::Json,
    }
}

/// Writes `features` as FlatGeobuf (EPSG:4326, with a spatial index).
/// Features without a geometry are not in the index (FlatGeobuf has no null
/// geometry); the GeoJSON artifact keeps them.
pub fn to_flatgeobuf(name: &str, features: &[Feature]) -> Result<Vec<u8>, FgbError> {
    let mut columns: BTreeMap<&str, Option<Kind>> = BTreeMap::new();
    for f in features {
        for (k, v) in f.properties.iter().flatten() {
            let slot = columns.entry(k.as_str()).or_insert(None);
            if let Some(kind) = kind_of(v) {
                *slot = Some(slot.map_or(kind, |s| merge(s, kind)));
            }
        }
    }
    let columns: Vec<(&str, Kind)> = columns
        .into_iter()
        .filter(|(k, _)| *k != ID_COLUMN)
        .map(|(k, v)| (k, v.unwrap_or(Kind::String)))
        .collect();

    let options = FgbWriterOptions {
        write_index: true,
        detect_type: true,
        promote_to_multi: true,
        crs: FgbCrs {
            code: 4326,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = |e: &dyn std::fmt::Display| FgbError(e.to_string());
    let mut fgb = FgbWriter::create_with_options(name, GeometryType::Unknown, options)
        .map_err(|e| err(&e))?;
    fgb.add_column(ID_COLUMN, ColumnType::String, |_, c| c.nullable = false);
    for (name, kind) in &columns {
        let t = match kind {
            Kind::Bool => ColumnType::Bool,
            Kind::Long => ColumnType::Long,
            Kind::Double => ColumnType::Double,
            Kind::String => ColumnType::String,
            Kind::Json => ColumnType::Json,
        };
        fgb.add_column(name, t, |_, _| {});
    }
    for f in features {
        let Some(g) = &f.geometry else { continue };
        let geom: geo::Geometry<f64> = (&g.value).try_into().map_err(|e| err(&e))?;
        let id = f.id.as_ref().map(id_string).unwrap_or_default();
        let mut failed: Option<String> = None;
        fgb.add_feature_geom(geom, |w| {
            let mut put = |i: usize, name: &str, v: &ColumnValue| {
                if let Err(e) = w.property(i, name, v) {
                    failed.get_or_insert(e.to_string());
                }
            };
            put(0, ID_COLUMN, &ColumnValue::String(&id));
            for (i, (name, kind)) in columns.iter().enumerate() {
                let Some(v) = f.properties.as_ref().and_then(|p| p.get(*name)) else {
                    continue;
                };
                let json;
                let cv = match (kind, v) {
                    (_, JsonValue::Null) => continue,
                    (Kind::Bool, JsonValue::Bool(b)) => ColumnValue::Bool(*b),
                    (Kind::Long, JsonValue::Number(n)) => match n.as_i64() {
                        Some(x) => ColumnValue::Long(x),
                        None => continue,
                    },
                    (Kind::Double, JsonValue::Number(n)) => match n.as_f64() {
                        Some(x) => ColumnValue::Double(x),
                        None => continue,
                    },
                    (Kind::String, JsonValue::String(s)) => ColumnValue::String(s),
                    (_, other) => {
                        json = other.to_string();
                        ColumnValue::Json(&json)
                    }
                };
                put(i + 1, name, &cv);
            }
        })
        .map_err(|e| err(&e))?;
        if let Some(e) = failed {
            return Err(FgbError(e));
        }
    }
    let mut out = Vec::new();
    fgb.write(&mut out).map_err(|e| err(&e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_indexed_file_deterministically() {
        let fc: geojson::FeatureCollection = r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","id":1,"properties":{"name":"a","n":1},"geometry":{"type":"Point","coordinates":[-98,38]}},
            {"type":"Feature","id":2,"properties":{"name":"b","n":2.5},"geometry":{"type":"Point","coordinates":[-97,39]}},
            {"type":"Feature","id":3,"properties":{"name":null},"geometry":null}
        ]}"#
        .parse()
        .unwrap();
        let a = to_flatgeobuf("t", &fc.features).unwrap();
        let b = to_flatgeobuf("t", &fc.features).unwrap();
        assert_eq!(a, b);
        let mut cursor = std::io::Cursor::new(&a);
        let reader = flatgeobuf::FgbReader::open(&mut cursor).unwrap();
        assert_eq!(reader.header().features_count(), 2);
        assert!(reader.header().index_node_size() > 0);
    }
}
