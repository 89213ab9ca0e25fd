//! Normalisation: raw bytes (CSV with coordinate columns, or GeoJSON) into
//! one RFC 7946 FeatureCollection, checked on the way.
//!
//! Every problem is reported with where it is (CSV line, or feature index
//! and id) so that a steward can fix the source. The output is a pure
//! function of the input bytes and the spec: no clock, no randomness, no
//! hash-map iteration order — gate A relies on that.

use std::hash::BuildHasher;
use std::io::Read;

use geojson::{Feature, Geometry, GeometryValue, JsonObject, JsonValue};
use kfm_core::{DatasetSpec, SourceFormat};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

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

/// Normalises `bytes` as the spec's source format says, into memory (for
/// small inputs and tests; promotion streams with [`for_each_feature`]).
pub fn normalize(spec: &DatasetSpec, bytes: &[u8]) -> Result<Normalized, NormalizeError> {
    let mut features = Vec::new();
    match for_each_feature(spec, bytes, |_, f| {
        features.push(f);
        Ok(())
    }) {
        Ok(()) => {}
        Err(StreamError::Invalid(e)) => return Err(e),
        Err(StreamError::Sink(e)) => {
            return Err(NormalizeError {
                problems: vec![e],
                more: 0,
            });
        }
    }
    let bbox = bbox_of(&features);
    Ok(Normalized { features, bbox })
}

/// Why streaming a source stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The source does not normalise: its problems, located.
    Invalid(NormalizeError),
    /// The callback refused a feature (its own error, such as a write that
    /// failed).
    Sink(String),
}

/// Streams the source through normalisation, calling `on` with each
/// normalised feature and its index, in source order, holding one feature
/// at a time. Problems are collected as they are met (features with one
/// are not passed on) and reported together at the end; so `on` may have
/// seen features of a source that is then refused, and a caller writing
/// artifacts keeps them only when this returns `Ok`.
///
/// Memory: a CSV streams in constant space. A GeoJSON source keeps 24 bytes
/// per feature to find duplicate ids (a 128-bit digest of each id and
/// where it was met), never the features.
pub fn for_each_feature<R: Read>(
    spec: &DatasetSpec,
    source: R,
    on: impl FnMut(usize, Feature) -> Result<(), String>,
) -> Result<(), StreamError> {
    let mut on = on;
    match spec.source.format {
        SourceFormat::Csv => csv_stream(spec, source, &mut on),
        SourceFormat::Geojson => geojson_stream(source, &mut on),
    }
}

/// Streams a published artifact (a FeatureCollection this module wrote),
/// calling `on` with each feature and its index, holding one at a time:
/// what a projection loads. The same checks as a source run, so an
/// artifact that no longer parses as one is refused, never half-read.
pub fn for_each_published_feature<R: Read>(
    artifact: R,
    on: impl FnMut(usize, Feature) -> Result<(), String>,
) -> Result<(), StreamError> {
    let mut on = on;
    geojson_stream(artifact, &mut on)
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

fn csv_stream<R: Read>(
    spec: &DatasetSpec,
    source: R,
    on: &mut dyn FnMut(usize, Feature) -> Result<(), String>,
) -> Result<(), StreamError> {
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
        .buffer_capacity(1 << 16)
        .from_reader(source);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            problems.push(format!("line 1: cannot read the CSV header: {e}"));
            return problems.finish(()).map_err(StreamError::Invalid);
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
            return problems.finish(()).map_err(StreamError::Invalid);
        }
    };
    let names: Vec<String> = headers.iter().map(str::to_owned).collect();
    let mut emitted = 0usize;
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
        let f = Feature {
            bbox: None,
            geometry: Some(Geometry::new(GeometryValue::Point {
                coordinates: vec![lon, lat].into(),
            })),
            id: Some(geojson::feature::Id::Number(row.into())),
            properties: Some(props),
            foreign_members: None,
        };
        if problems.list.is_empty() {
            on(emitted, f).map_err(StreamError::Sink)?;
        }
        emitted += 1;
    }
    problems.finish(()).map_err(StreamError::Invalid)
}

/// Where a streamed GeoJSON stands.
struct GeoState<'a> {
    on: &'a mut dyn FnMut(usize, Feature) -> Result<(), String>,
    problems: Problems,
    index: usize,
    /// Every id met: two digests (keyed SipHash, 128 bits together), and
    /// the feature index with the top bit set when the id was assigned.
    ids: Vec<(u64, u64, u64)>,
    hashers: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    /// The callback's error, which stops the stream.
    sink: Option<String>,
}

const ASSIGNED: u64 = 1 << 63;

impl GeoState<'_> {
    fn feature(&mut self, raw: JsonValue) {
        let index = self.index;
        self.index += 1;
        let mut f: Feature = match serde_json::from_value(raw) {
            Ok(f) => f,
            Err(e) => {
                self.problems.push(format!("feature {index}: {e}"));
                return;
            }
        };
        let label = match &f.id {
            Some(id) => format!("feature {index} (id {})", id_string(id)),
            None => format!("feature {index}"),
        };
        if let Some(g) = &f.geometry {
            check_geometry(&g.value, &label, &mut self.problems);
        }
        let assigned = f.id.is_none();
        if assigned {
            f.id = Some(geojson::feature::Id::Number(((index as u64) + 1).into()));
        }
        if let Some(id) = &f.id {
            let text = id_string(id);
            let (a, b) = (
                self.hashers.0.hash_one(&text),
                self.hashers.1.hash_one(&text),
            );
            self.ids
                .push((a, b, index as u64 | if assigned { ASSIGNED } else { 0 }));
        }
        if self.problems.list.is_empty()
            && self.sink.is_none()
            && let Err(e) = (self.on)(index, f)
        {
            self.sink = Some(e);
        }
    }

    /// Duplicate ids, found once every id is known: each pair named by the
    /// later feature (an assigned id colliding with a source id says so).
    fn check_ids(&mut self) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.sort_unstable();
        for w in ids.windows(2) {
            let ((a1, b1, i1), (a2, b2, i2)) = (w[0], w[1]);
            if (a1, b1) != (a2, b2) {
                continue;
            }
            let (first, second) = if i1 & !ASSIGNED < i2 & !ASSIGNED {
                (i1, i2)
            } else {
                (i2, i1)
            };
            let (fi, si) = (first & !ASSIGNED, second & !ASSIGNED);
            if (first | second) & ASSIGNED != 0 {
                let assigned = if first & ASSIGNED != 0 { fi } else { si };
                self.problems.push(format!(
                    "feature {assigned}: the id {} assigned to a feature without one collides with a source id; give every feature an id",
                    assigned + 1
                ));
            } else {
                self.problems.push(format!(
                    "feature {si}: duplicate id (feature {fi} has it too): feature ids must be unique (the evidence resolver addresses features by id)"
                ));
            }
        }
    }
}

/// The top-level document: a FeatureCollection (its `features` streamed
/// one by one as they are parsed), or a single Feature (buffered: it is
/// one feature).
struct Top<'s, 'a>(&'s mut GeoState<'a>);

/// What the top level held besides its features.
struct TopSeen {
    kind: Option<String>,
    features: bool,
    rest: JsonObject,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = TopSeen;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<TopSeen, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = TopSeen;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a GeoJSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<TopSeen, M::Error> {
        let mut seen = TopSeen {
            kind: None,
            features: false,
            rest: JsonObject::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => match map.next_value::<JsonValue>()? {
                    JsonValue::String(s) => seen.kind = Some(s),
                    other => seen.kind = Some(other.to_string()),
                },
                "features" => {
                    seen.features = true;
                    map.next_value_seed(Features(&mut *self.0))?;
                }
                _ => {
                    let v: JsonValue = map.next_value()?;
                    seen.rest.insert(key, v);
                }
            }
        }
        Ok(seen)
    }
}

/// The `features` array, each element handed on as it is parsed.
struct Features<'s, 'a>(&'s mut GeoState<'a>);

impl<'de> DeserializeSeed<'de> for Features<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Features<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the FeatureCollection's \"features\" array")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while let Some(raw) = seq.next_element::<JsonValue>()? {
            self.0.feature(raw);
            if self.0.sink.is_some() {
                return Err(serde::de::Error::custom("stopped by the sink"));
            }
        }
        Ok(())
    }
}

fn geojson_stream<R: Read>(
    source: R,
    on: &mut dyn FnMut(usize, Feature) -> Result<(), String>,
) -> Result<(), StreamError> {
    let mut st = GeoState {
        on,
        problems: Problems::new(),
        index: 0,
        ids: Vec::new(),
        hashers: Default::default(),
        sink: None,
    };
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, source));
    let top = Top(&mut st)
        .deserialize(&mut de)
        .and_then(|t| de.end().map(|()| t));
    if let Some(e) = st.sink.take() {
        return Err(StreamError::Sink(e));
    }
    let seen = match top {
        Ok(t) => t,
        Err(e) => {
            st.problems
                .push(if e.is_data() && e.to_string().contains("features") {
                    format!("the FeatureCollection's \"features\" member is not an array: {e}")
                } else {
                    format!("line {} column {}: not JSON: {e}", e.line(), e.column())
                });
            return st.problems.finish(()).map_err(StreamError::Invalid);
        }
    };
    match seen.kind.as_deref() {
        Some("FeatureCollection") if !seen.features => {
            st.problems
                .push("the FeatureCollection has no \"features\" array".into());
        }
        Some("FeatureCollection") => {}
        Some("Feature") if !seen.features => {
            let mut doc = seen.rest;
            doc.insert("type".into(), JsonValue::String("Feature".into()));
            st.feature(JsonValue::Object(doc));
        }
        Some("Feature") => st
            .problems
            .push("a Feature has no \"features\" member: expected a FeatureCollection".into()),
        Some(other) => st.problems.push(format!(
            "top-level type is {other:?}: expected a FeatureCollection or a Feature (a bare geometry has no properties to govern)"
        )),
        None => st
            .problems
            .push("the document has no \"type\": not GeoJSON".into()),
    }
    if let Some(e) = st.sink.take() {
        return Err(StreamError::Sink(e));
    }
    st.check_ids();
    st.problems.finish(()).map_err(StreamError::Invalid)
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
        assert!(
            all.contains("feature 4: duplicate id (feature 0 has it too)"),
            "{all}"
        );
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
