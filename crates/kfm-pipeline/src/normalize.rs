//! Normalisation: raw bytes (CSV with coordinate columns, or GeoJSON) into
//! one RFC 7946 FeatureCollection, checked on the way.
//!
//! Every problem is reported with where it is (CSV line, or feature index
//! and id) so that a steward can fix the source. The output is a pure
//! function of the input bytes and the spec: no clock, no randomness, no
//! hash-map iteration order — gate A relies on that.

use std::collections::HashSet;

use geojson::{Feature, Geometry, GeometryValue, JsonObject, JsonValue};
use kfm_core::{DatasetSpec, SourceFormat};

/// At most this many problems are listed; the rest are counted.
pub const MAX_PROBLEMS: usize = 20;

/// The normalised dataset.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub features: Vec<Feature>,
    /// `[west, south, east, north]` over every coordinate, if any feature has
    /// a geometry.
    pub bbox: Option<[f64; 4]>,
}

/// Why a source could not be normalised: the problems found, each located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct NormalizeError {
    pub problems: Vec<String>,
    /// Problems found beyond those listed.
    pub more: usize,
}

struct Problems {
    list: Vec<String>,
    more: usize,
}

impl Problems {
    fn new() -> Self {
        Self {
            list: Vec::new(),
            more: 0,
        }
    }
    fn push(&mut self, p: String) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(p);
        } else {
            self.more += 1;
        }
    }
    fn finish<T>(self, ok: T) -> Result<T, NormalizeError> {
        if self.list.is_empty() {
            Ok(ok)
        } else {
            let mut problems = self.list;
            if self.more > 0 {
                problems.push(format!("… and {} more", self.more));
            }
            Err(NormalizeError {
                problems,
                more: self.more,
            })
        }
    }
}

/// Normalises `bytes` as the spec's source format says.
pub fn normalize(spec: &DatasetSpec, bytes: &[u8]) -> Result<Normalized, NormalizeError> {
    let features = match spec.source.format {
        SourceFormat::Csv => from_csv(spec, bytes)?,
        SourceFormat::Geojson => from_geojson(bytes)?,
    };
    let bbox = bbox_of(&features);
    Ok(Normalized { features, bbox })
}

/// Serialises features as a compact GeoJSON FeatureCollection, one feature
/// at a time (no copy of the features). Keys come out in the order
/// serde_json keeps them, so the bytes are a pure function of the input.
pub fn to_geojson(features: &[Feature]) -> Vec<u8> {
    let mut out = Vec::with_capacity(features.len() * 160 + 64);
    out.extend_from_slice(br#"{"type":"FeatureCollection","features":["#);
    for (i, f) in features.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a Feature into a Vec cannot fail (no I/O, string keys).
        let _ = serde_json::to_writer(&mut out, f);
    }
    out.extend_from_slice(b"]}\n");
    out
}

fn from_csv(spec: &DatasetSpec, bytes: &[u8]) -> Result<Vec<Feature>, NormalizeError> {
    let lat_col = spec
        .source
        .lat_column
        .as_ref()
        .map_or("lat", |t| t.as_str());
    let lon_col = spec
        .source
        .lon_column
        .as_ref()
        .map_or("lon", |t| t.as_str());
    let mut problems = Problems::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            problems.push(format!("line 1: cannot read the CSV header: {e}"));
            return problems.finish(Vec::new());
        }
    };
    let find = |name: &str, key: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "line 1: the CSV header has no column {name:?} (source.{key}); columns are {}",
                headers.iter().collect::<Vec<_>>().join(", ")
            )
        })
    };
    let (lat_i, lon_i) = match (find(lat_col, "lat_column"), find(lon_col, "lon_column")) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                problems.push(e);
            }
            return problems.finish(Vec::new());
        }
    };
    let names: Vec<String> = headers.iter().map(str::to_owned).collect();
    let mut features = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut row = 0u64;
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                problems.push(format!("line {line}: {e}"));
                break;
            }
        }
        row += 1;
        let line = record.position().map_or(row + 1, |p| p.line());
        let coord = |i: usize, what: &str, limit: f64| -> Result<f64, String> {
            let raw = record.get(i).unwrap_or("").trim();
            let v: f64 = raw.parse().map_err(|_| {
                format!("line {line}: {what} {raw:?} is not a number in decimal degrees")
            })?;
            if !v.is_finite() || v.abs() > limit {
                return Err(format!(
                    "line {line}: {what} {raw} is outside [-{limit}, {limit}]"
                ));
            }
            Ok(v)
        };
        let (lat, lon) = match (
            coord(lat_i, "latitude", 90.0),
            coord(lon_i, "longitude", 180.0),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                for e in [a.err(), b.err()].into_iter().flatten() {
                    problems.push(e);
                }
                continue;
            }
        };
        let mut props = JsonObject::new();
        for (i, (name, value)) in names.iter().zip(record.iter()).enumerate() {
            if i == lat_i || i == lon_i {
                continue;
            }
            let v = if value.is_empty() {
                JsonValue::Null
            } else {
                JsonValue::String(value.to_owned())
            };
            props.insert(name.clone(), v);
        }
        features.push(Feature {
            bbox: None,
            geometry: Some(Geometry::new(GeometryValue::Point {
                coordinates: vec![lon, lat].into(),
            })),
            id: Some(geojson::feature::Id::Number(row.into())),
            properties: Some(props),
            foreign_members: None,
        });
    }
    problems.finish(features)
}

fn from_geojson(bytes: &[u8]) -> Result<Vec<Feature>, NormalizeError> {
    let mut problems = Problems::new();
    let doc: JsonValue = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!(
                "line {} column {}: not JSON: {e}",
                e.line(),
                e.column()
            ));
            return problems.finish(Vec::new());
        }
    };
    let raw_features: Vec<JsonValue> = match doc.get("type").and_then(JsonValue::as_str) {
        Some("FeatureCollection") => match doc.get("features") {
            Some(JsonValue::Array(a)) => a.clone(),
            _ => {
                problems.push("the FeatureCollection has no \"features\" array".into());
                return problems.finish(Vec::new());
            }
        },
        Some("Feature") => vec![doc],
        Some(other) => {
            problems.push(format!(
                "top-level type is {other:?}: expected a FeatureCollection or a Feature (a bare geometry has no properties to govern)"
            ));
            return problems.finish(Vec::new());
        }
        None => {
            problems.push("the document has no \"type\": not GeoJSON".into());
            return problems.finish(Vec::new());
        }
    };
    let mut features = Vec::with_capacity(raw_features.len());
    let mut seen_ids: HashSet<String> = HashSet::new();
    for (index, raw) in raw_features.into_iter().enumerate() {
        let mut f: Feature = match serde_json::from_value(raw) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("feature {index}: {e}"));
                continue;
            }
        };
        let label = match &f.id {
            Some(id) => format!("feature {index} (id {})", id_string(id)),
            None => format!("feature {index}"),
        };
        if let Some(g) = &f.geometry {
            check_geometry(&g.value, &label, &mut problems);
        }
        match &f.id {
            Some(id) => {
                if !seen_ids.insert(id_string(id)) {
                    problems.push(format!(
                        "{label}: duplicate id: feature ids must be unique (the evidence resolver addresses features by id)"
                    ));
                }
            }
            None => {
                f.id = Some(geojson::feature::Id::Number(((index as u64) + 1).into()));
            }
        }
        features.push(f);
    }
    // Assigned ids must not collide with ids the source gave.
    if problems.list.is_empty() {
        let mut all = HashSet::new();
        for (index, f) in features.iter().enumerate() {
            if let Some(id) = &f.id
                && !all.insert(id_string(id))
            {
                problems.push(format!(
                    "feature {index}: the id {} assigned to a feature without one collides with a source id; give every feature an id",
                    id_string(id)
                ));
                break;
            }
        }
    }
    problems.finish(features)
}

/// A feature id as text (numbers as written).
pub fn id_string(id: &geojson::feature::Id) -> String {
    match id {
        geojson::feature::Id::String(s) => s.clone(),
        geojson::feature::Id::Number(n) => n.to_string(),
    }
}

fn check_position(p: &[f64], at: &str, problems: &mut Problems) -> bool {
    if !(2..=3).contains(&p.len()) {
        problems.push(format!(
            "{at}: a position has {} numbers (RFC 7946 §3.1.1: longitude, latitude and an optional altitude)",
            p.len()
        ));
        return false;
    }
    if !p.iter().all(|v| v.is_finite()) {
        problems.push(format!("{at}: a position is not finite"));
        return false;
    }
    // Only the offending number is quoted: a valid coordinate beside it may
    // be a sensitive location, and reports travel into the ledger.
    let (lon, lat) = (p[0], p[1]);
    if !(-180.0..=180.0).contains(&lon) {
        problems.push(format!(
            "{at}: longitude {lon} is out of range -180..180 (WGS 84, as RFC 7946 requires)"
        ));
        return false;
    }
    if !(-90.0..=90.0).contains(&lat) {
        problems.push(format!(
            "{at}: latitude {lat} is out of range -90..90 (WGS 84, as RFC 7946 requires)"
        ));
        return false;
    }
    true
}

fn check_line(line: &[geojson::Position], at: &str, problems: &mut Problems) {
    if line.len() < 2 {
        problems.push(format!(
            "{at}: a LineString needs at least 2 positions, has {}",
            line.len()
        ));
    }
    for p in line {
        if !check_position(p.as_slice(), at, problems) {
            return;
        }
    }
}

fn check_polygon(rings: &[Vec<geojson::Position>], at: &str, problems: &mut Problems) {
    if rings.is_empty() {
        problems.push(format!("{at}: a Polygon has no rings"));
    }
    for (r, ring) in rings.iter().enumerate() {
        if ring.len() < 4 {
            problems.push(format!(
                "{at}: ring {r} has {} positions; a linear ring needs at least 4",
                ring.len()
            ));
            continue;
        }
        if ring.first().map(|p| p.as_slice()) != ring.last().map(|p| p.as_slice()) {
            problems.push(format!(
                "{at}: ring {r} is not closed (its first and last positions differ)"
            ));
        }
        for p in ring {
            if !check_position(p.as_slice(), at, problems) {
                break;
            }
        }
    }
}

fn check_geometry(g: &GeometryValue, at: &str, problems: &mut Problems) {
    match g {
        GeometryValue::Point { coordinates } => {
            check_position(coordinates.as_slice(), at, problems);
        }
        GeometryValue::MultiPoint { coordinates } => {
            for p in coordinates {
                if !check_position(p.as_slice(), at, problems) {
                    break;
                }
            }
        }
        GeometryValue::LineString { coordinates } => check_line(coordinates, at, problems),
        GeometryValue::MultiLineString { coordinates } => {
            for l in coordinates {
                check_line(l, at, problems);
            }
        }
        GeometryValue::Polygon { coordinates } => check_polygon(coordinates, at, problems),
        GeometryValue::MultiPolygon { coordinates } => {
            for (i, p) in coordinates.iter().enumerate() {
                check_polygon(p, &format!("{at} polygon {i}"), problems);
            }
        }
        GeometryValue::GeometryCollection { geometries } => {
            for (i, g) in geometries.iter().enumerate() {
                check_geometry(&g.value, &format!("{at} member {i}"), problems);
            }
        }
    }
}

/// Visits every position of a geometry.
pub fn for_each_position(g: &GeometryValue, f: &mut impl FnMut(&[f64])) {
    match g {
        GeometryValue::Point { coordinates } => f(coordinates.as_slice()),
        GeometryValue::MultiPoint { coordinates } | GeometryValue::LineString { coordinates } => {
            coordinates.iter().for_each(|p| f(p.as_slice()))
        }
        GeometryValue::MultiLineString { coordinates } | GeometryValue::Polygon { coordinates } => {
            coordinates.iter().flatten().for_each(|p| f(p.as_slice()))
        }
        GeometryValue::MultiPolygon { coordinates } => coordinates
            .iter()
            .flatten()
            .flatten()
            .for_each(|p| f(p.as_slice())),
        GeometryValue::GeometryCollection { geometries } => geometries
            .iter()
            .for_each(|g| for_each_position(&g.value, f)),
    }
}

/// The bounding box of a geometry, `[west, south, east, north]`.
pub fn geometry_bbox(g: &GeometryValue) -> Option<[f64; 4]> {
    let mut b: Option<[f64; 4]> = None;
    for_each_position(g, &mut |p| {
        let (x, y) = (p[0], p[1]);
        b = Some(match b {
            None => [x, y, x, y],
            Some([w, s, e, n]) => [w.min(x), s.min(y), e.max(x), n.max(y)],
        });
    });
    b
}

fn bbox_of(features: &[Feature]) -> Option<[f64; 4]> {
    features
        .iter()
        .filter_map(|f| f.geometry.as_ref().and_then(|g| geometry_bbox(&g.value)))
        .reduce(|[w, s, e, n], [w2, s2, e2, n2]| [w.min(w2), s.min(s2), e.max(e2), n.max(n2)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use geojson::FeatureCollection;

    fn spec(format: &str) -> DatasetSpec {
        let cols = if format == "csv" {
            ", lat_column: lat, lon_column: lng"
        } else {
            ""
        };
        let text = format!(
            "id: tt\ntitle: T\ndescription: D\npublisher: {{name: P}}\ncontact: {{name: C, email: c@example.org}}\nsource: {{uri: x, format: {format}{cols}}}\nlicense: {{spdx: CC0-1.0, rights_holder: R}}\nsensitivity: {{policy_label: public}}\n"
        );
        DatasetSpec::parse(&text, "t.yaml").unwrap()
    }

    #[test]
    fn csv_rows_become_points_with_string_properties() {
        let n = normalize(
            &spec("csv"),
            b"name,lat,lng,code\nA,38.5,-98.1,01\nB,39,-97,\n",
        )
        .unwrap();
        assert_eq!(n.features.len(), 2);
        let f = &n.features[0];
        assert_eq!(f.properties.as_ref().unwrap()["code"], "01");
        assert_eq!(
            n.features[1].properties.as_ref().unwrap()["code"],
            JsonValue::Null
        );
        assert_eq!(n.bbox, Some([-98.1, 38.5, -97.0, 39.0]));
    }

    #[test]
    fn csv_problems_name_the_line() {
        let e = normalize(
            &spec("csv"),
            b"name,lat,lng\nA,38.5,-98.1\nB,95,-97\nC,x,1\n",
        )
        .unwrap_err();
        assert!(e.problems[0].starts_with("line 3: latitude 95"), "{e}");
        assert!(e.problems[1].starts_with("line 4: latitude \"x\""), "{e}");
        let e = normalize(&spec("csv"), b"name,y,x\n").unwrap_err();
        assert!(e.to_string().contains("no column \"lat\""), "{e}");
    }

    #[test]
    fn geojson_problems_name_the_feature() {
        let doc = br#"{"type":"FeatureCollection","features":[
          {"type":"Feature","id":"a","properties":{},"geometry":{"type":"Point","coordinates":[1,2]}},
          {"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}},
          {"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[200,2]}},
          {"type":"Feature","properties":{},"geometry":{"type":"Circle","coordinates":[1,2]}},
          {"type":"Feature","id":"a","properties":{},"geometry":null}
        ]}"#;
        let e = normalize(&spec("geojson"), doc).unwrap_err();
        let all = e.problems.join("\n");
        assert!(all.contains("feature 1: ring 0 is not closed"), "{all}");
        assert!(
            all.contains("feature 2: longitude 200 is out of range"),
            "{all}"
        );
        assert!(
            !all.contains("[200, 2]"),
            "a valid coordinate beside a bad one is not quoted"
        );
        assert!(all.contains("feature 3:"), "{all}");
        assert!(all.contains("feature 4 (id a): duplicate id"), "{all}");
    }

    #[test]
    fn output_is_byte_identical_across_runs() {
        let s = spec("csv");
        let src = b"name,lat,lng\nA,38.5,-98.1\nB,39,-97\n";
        let a = to_geojson(&normalize(&s, src).unwrap().features);
        let b = to_geojson(&normalize(&s, src).unwrap().features);
        assert_eq!(a, b);
        // And it is GeoJSON.
        let back: FeatureCollection = serde_json::from_slice(&a).unwrap();
        assert_eq!(back.features.len(), 2);
    }
}
