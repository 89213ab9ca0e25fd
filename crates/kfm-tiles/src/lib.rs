//! Vector tiles for KFM's API: the WebMercatorQuad tile matrix set (OGC
//! 2D Tile Matrix Set, the grid every web map and QGIS use) and the
//! encoding of features into one Mapbox Vector Tile layer.
//!
//! This crate never decides what a caller may see: it is handed features
//! that policy has already shaped (generalised, redacted) and only draws
//! them. The API's PostGIS backend draws the same tiles with `ST_AsMVT`;
//! this is the embedded default's drawing, and the PostGIS backend's for
//! views that are shaped in the API process.
//!
//! The encoding follows what `ST_AsMVTGeom` does, so both backends give a
//! client the same picture: geometries are moved into tile space (extent
//! 4096, y down), clipped to the tile plus a buffer, simplified to the
//! tile's resolution, snapped to the integer grid, and polygons oriented
//! as the specification asks (exterior rings clockwise on screen).

use std::f64::consts::PI;

use geo::{
    BooleanOps, BoundingRect, Coord, Geometry, LineString, MapCoords, MultiLineString, MultiPoint,
    MultiPolygon, Orient, Point, Polygon, Rect, Simplify, orient::Direction,
};
use geozero::ToMvt;
use geozero::mvt::{Message, TagsBuilder, Tile, TileValue, tile};
use serde_json::{Map, Value};

/// Tile units along one edge of a tile.
pub const EXTENT: u32 = 4096;
/// Tile units drawn beyond each edge, so that lines and symbols at a
/// tile's border join their neighbours without seams.
pub const BUFFER: u32 = 64;
/// The deepest zoom level served (WebMercatorQuad defines 0 to 24).
pub const MAX_ZOOM: u8 = 24;
/// The identifier of the only tile matrix set served.
pub const TMS: &str = "WebMercatorQuad";
/// Its definition's URI.
pub const TMS_URI: &str = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad";
/// The property every drawn feature carries with its KFM feature id, so a
/// map can link a drawn feature to its item (MVT ids are integers).
pub const ID_KEY: &str = "kfm:id";

/// Half the extent of the Web Mercator plane, metres (EPSG:3857).
const HALF: f64 = 20_037_508.342_789_244;
/// Latitudes beyond this are outside Web Mercator's square.
const MAX_LAT: f64 = 85.051_128_779_806_59;
const RADIUS: f64 = 6_378_137.0;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TileError {
    #[error("zoom level {0} is outside 0-{MAX_ZOOM} of WebMercatorQuad")]
    Zoom(u32),
    #[error("tile column {x} or row {y} is outside zoom level {z}'s 0-{max}")]
    Outside { z: u8, x: u32, y: u32, max: u32 },
    #[error("the tile could not be encoded: {0}")]
    Encode(String),
}

/// One tile of WebMercatorQuad: zoom level, column (x) and row (y, from
/// the top), as in `/tiles/WebMercatorQuad/{z}/{y}/{x}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileId {
    pub z: u8,
    pub x: u32,
    pub y: u32,
}

impl TileId {
    /// A tile, checked against the matrix set's bounds.
    pub fn new(z: u32, x: u32, y: u32) -> Result<Self, TileError> {
        let zz = u8::try_from(z)
            .ok()
            .filter(|z| *z <= MAX_ZOOM)
            .ok_or(TileError::Zoom(z))?;
        let max = (1u32 << zz) - 1;
        if x > max || y > max {
            return Err(TileError::Outside { z: zz, x, y, max });
        }
        Ok(Self { z: zz, x, y })
    }

    /// The tile's edge, metres of Web Mercator.
    pub fn size(&self) -> f64 {
        2.0 * HALF / f64::from(1u32 << self.z)
    }

    /// `[left, bottom, right, top]` in EPSG:3857 metres, without buffer.
    pub fn bounds_mercator(&self) -> [f64; 4] {
        let s = self.size();
        let left = -HALF + f64::from(self.x) * s;
        let top = HALF - f64::from(self.y) * s;
        [left, top - s, left + s, top]
    }

    /// `[minlon, minlat, maxlon, maxlat]` of the tile grown by
    /// [`BUFFER`] on every side: what a feature must meet to be drawn.
    pub fn bounds_lonlat_buffered(&self) -> [f64; 4] {
        let [l, b, r, t] = self.bounds_mercator();
        let pad = self.size() * f64::from(BUFFER) / f64::from(EXTENT);
        let (w, s) = unproject(l - pad, b - pad);
        let (e, n) = unproject(r + pad, t + pad);
        // Tiles at the map's edge reach the poles' bands too.
        let s = if self.y == (1u32 << self.z) - 1 {
            -90.0
        } else {
            s
        };
        let n = if self.y == 0 { 90.0 } else { n };
        [w.max(-180.0), s, e.min(180.0), n]
    }
}

/// Longitude/latitude to Web Mercator metres, latitude clamped to the
/// square.
pub fn project(lon: f64, lat: f64) -> (f64, f64) {
    let lat = lat.clamp(-MAX_LAT, MAX_LAT);
    let x = lon.to_radians() * RADIUS;
    let y = (PI / 4.0 + lat.to_radians() / 2.0).tan().ln() * RADIUS;
    (x, y)
}

/// Web Mercator metres to longitude/latitude.
pub fn unproject(x: f64, y: f64) -> (f64, f64) {
    let lon = (x / RADIUS).to_degrees();
    let lat = (2.0 * (y / RADIUS).exp().atan() - PI / 2.0).to_degrees();
    (lon, lat)
}

/// A position in tile units back to longitude/latitude (for tests and
/// clients that check what a tile holds).
pub fn tile_to_lonlat(t: TileId, px: f64, py: f64) -> (f64, f64) {
    let [l, _, _, top] = t.bounds_mercator();
    let unit = t.size() / f64::from(EXTENT);
    unproject(l + px * unit, top - py * unit)
}

/// One feature to draw: its position in the layer (the MVT feature id),
/// its KFM id, geometry in longitude/latitude, and properties as served.
pub struct Draw<'a> {
    pub ord: u64,
    pub id: Option<&'a str>,
    pub geometry: &'a Geometry<f64>,
    pub properties: Option<&'a Map<String, Value>>,
}

/// Builds one tile of one layer.
pub struct LayerBuilder {
    tile: TileId,
    name: String,
    tags: TagsBuilder,
    features: Vec<tile::Feature>,
}

impl LayerBuilder {
    pub fn new(name: &str, tile: TileId) -> Self {
        Self {
            tile,
            name: name.to_owned(),
            tags: TagsBuilder::new(),
            features: Vec::new(),
        }
    }

    /// Draws a feature if any of it falls in the tile (with buffer).
    pub fn add(&mut self, d: &Draw<'_>) -> Result<(), TileError> {
        let Some(g) = to_tile_space(self.tile, d.geometry) else {
            return Ok(());
        };
        let mut f = g
            .to_mvt_unscaled()
            .map_err(|e| TileError::Encode(e.to_string()))?;
        f.id = Some(d.ord);
        if let Some(id) = d.id {
            self.tag(&mut f, ID_KEY, TileValue::Str(id.to_owned()));
        }
        if let Some(p) = d.properties {
            for (k, v) in p {
                if let Some(tv) = tile_value(v) {
                    self.tag(&mut f, k, tv);
                }
            }
        }
        self.features.push(f);
        Ok(())
    }

    fn tag(&mut self, f: &mut tile::Feature, k: &str, v: TileValue) {
        let (ki, vi) = self.tags.insert_ref(k, v);
        f.tags.push(ki);
        f.tags.push(vi);
    }

    /// How many features were drawn.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The tile's bytes (protobuf, uncompressed). A tile where nothing
    /// was drawn has no layer at all and is zero bytes long, as
    /// `ST_AsMVT` answers over no rows.
    pub fn finish(self) -> Vec<u8> {
        if self.features.is_empty() {
            return Vec::new();
        }
        let (keys, values) = self.tags.into_tags();
        let layer = tile::Layer {
            version: 2,
            name: self.name,
            features: self.features,
            keys,
            values: values.into_iter().map(Into::into).collect(),
            extent: Some(EXTENT),
        };
        Tile {
            layers: vec![layer],
        }
        .encode_to_vec()
    }
}

/// A property value as MVT holds it: strings, booleans and numbers as
/// themselves, arrays and objects as their JSON text, null not at all.
fn tile_value(v: &Value) -> Option<TileValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => TileValue::Bool(*b),
        Value::String(s) => TileValue::Str(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                TileValue::Sint(i)
            } else if let Some(u) = n.as_u64() {
                TileValue::Uint(u)
            } else {
                TileValue::Double(n.as_f64()?)
            }
        }
        Value::Array(_) | Value::Object(_) => TileValue::Str(v.to_string()),
    })
}

/// The geometry in this tile's integer space, clipped, simplified and
/// oriented; `None` when nothing of it is left to draw.
fn to_tile_space(t: TileId, g: &Geometry<f64>) -> Option<Geometry<f64>> {
    let [left, _, _, top] = t.bounds_mercator();
    let scale = f64::from(EXTENT) / t.size();
    let moved = g.map_coords(|c| {
        let (x, y) = project(c.x, c.y);
        Coord {
            x: (x - left) * scale,
            y: (top - y) * scale,
        }
    });
    let lo = -f64::from(BUFFER);
    let hi = f64::from(EXTENT + BUFFER);
    let frame = Rect::new(Coord { x: lo, y: lo }, Coord { x: hi, y: hi });
    let bb = moved.bounding_rect()?;
    if bb.max().x < lo || bb.min().x > hi || bb.max().y < lo || bb.min().y > hi {
        return None;
    }
    let inside = bb.min().x >= lo && bb.max().x <= hi && bb.min().y >= lo && bb.max().y <= hi;
    match moved {
        Geometry::Point(p) => snap_point(p).map(Geometry::Point),
        Geometry::MultiPoint(mp) => {
            let pts: Vec<Point<f64>> =
                mp.0.into_iter()
                    .filter(|p| frame.contains_coord(p.0))
                    .filter_map(snap_point)
                    .collect();
            (!pts.is_empty()).then_some(Geometry::MultiPoint(MultiPoint(pts)))
        }
        Geometry::LineString(l) => lines(MultiLineString(vec![l]), &frame, inside),
        Geometry::MultiLineString(ml) => lines(ml, &frame, inside),
        Geometry::Polygon(p) => polygons(MultiPolygon(vec![p]), &frame, inside),
        Geometry::MultiPolygon(mp) => polygons(mp, &frame, inside),
        Geometry::Rect(r) => polygons(MultiPolygon(vec![r.to_polygon()]), &frame, inside),
        Geometry::Triangle(tr) => polygons(MultiPolygon(vec![tr.to_polygon()]), &frame, inside),
        Geometry::Line(l) => lines(MultiLineString(vec![l.into()]), &frame, inside),
        // KFM's artifacts hold no collections; one that did would be drawn
        // by its members in a later version, not guessed at here.
        Geometry::GeometryCollection(_) => None,
    }
}

trait RectExt {
    fn contains_coord(&self, c: Coord<f64>) -> bool;
}

impl RectExt for Rect<f64> {
    fn contains_coord(&self, c: Coord<f64>) -> bool {
        c.x >= self.min().x && c.x <= self.max().x && c.y >= self.min().y && c.y <= self.max().y
    }
}

fn snap_point(p: Point<f64>) -> Option<Point<f64>> {
    let lo = -f64::from(BUFFER);
    let hi = f64::from(EXTENT + BUFFER);
    let (x, y) = (p.x().round(), p.y().round());
    (x >= lo && x <= hi && y >= lo && y <= hi).then(|| Point::new(x, y))
}

/// Coordinates snapped to the grid, repeated positions dropped.
fn snap_line(l: &LineString<f64>) -> LineString<f64> {
    let mut out: Vec<Coord<f64>> = Vec::with_capacity(l.0.len());
    for c in &l.0 {
        let s = Coord {
            x: c.x.round(),
            y: c.y.round(),
        };
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    LineString(out)
}

fn lines(ml: MultiLineString<f64>, frame: &Rect<f64>, inside: bool) -> Option<Geometry<f64>> {
    let clipped = if inside {
        ml
    } else {
        frame.to_polygon().clip(&ml, false)
    };
    let out: Vec<LineString<f64>> = clipped
        .0
        .iter()
        .map(|l| snap_line(&l.simplify(0.5)))
        .filter(|l| l.0.len() >= 2)
        .collect();
    match out.len() {
        0 => None,
        1 => out.into_iter().next().map(Geometry::LineString),
        _ => Some(Geometry::MultiLineString(MultiLineString(out))),
    }
}

fn ring(l: &LineString<f64>) -> Option<LineString<f64>> {
    let mut r = snap_line(&l.simplify(0.5));
    r.close();
    // A ring needs three distinct corners to enclose anything.
    (r.0.len() >= 4).then_some(r)
}

fn polygons(mp: MultiPolygon<f64>, frame: &Rect<f64>, inside: bool) -> Option<Geometry<f64>> {
    let clipped = if inside {
        mp
    } else {
        mp.intersection(&frame.to_polygon())
    };
    let out: Vec<Polygon<f64>> = clipped
        .0
        .iter()
        .filter_map(|p| {
            let ext = ring(p.exterior())?;
            let holes = p.interiors().iter().filter_map(ring).collect();
            // Exterior rings of positive area in tile space (y down), which
            // looks clockwise on screen, as the MVT specification asks.
            Some(Polygon::new(ext, holes).orient(Direction::Default))
        })
        .filter(|p| geo::Area::unsigned_area(p) > 0.0)
        .collect();
    match out.len() {
        0 => None,
        1 => out.into_iter().next().map(Geometry::Polygon),
        _ => Some(Geometry::MultiPolygon(MultiPolygon(out))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geozero::mvt::Message;

    #[test]
    fn tile_ids_are_checked() {
        assert!(TileId::new(0, 0, 0).is_ok());
        assert_eq!(
            TileId::new(1, 2, 0),
            Err(TileError::Outside {
                z: 1,
                x: 2,
                y: 0,
                max: 1
            })
        );
        assert_eq!(TileId::new(25, 0, 0), Err(TileError::Zoom(25)));
        assert!(TileId::new(24, (1 << 24) - 1, (1 << 24) - 1).is_ok());
    }

    #[test]
    fn projection_round_trips() {
        for (lon, lat) in [(-97.3, 37.7), (0.0, 0.0), (179.9, -60.0)] {
            let (x, y) = project(lon, lat);
            let (a, b) = unproject(x, y);
            assert!((a - lon).abs() < 1e-9 && (b - lat).abs() < 1e-9);
        }
    }

    #[test]
    fn a_point_lands_where_it_belongs_and_round_trips() {
        // Wichita at z10.
        let (lon, lat): (f64, f64) = (-97.3375, 37.6922);
        let n = f64::from(1u32 << 10);
        let x = ((lon + 180.0) / 360.0 * n) as u32;
        let y = ((1.0 - (lat.to_radians().tan() + 1.0 / lat.to_radians().cos()).ln() / PI) / 2.0
            * n) as u32;
        let t = TileId::new(10, x, y).unwrap();
        let g = Geometry::Point(Point::new(lon, lat));
        let mut b = LayerBuilder::new("places", t);
        b.add(&Draw {
            ord: 7,
            id: Some("wichita"),
            geometry: &g,
            properties: None,
        })
        .unwrap();
        let bytes = b.finish();
        let tile = Tile::decode(bytes.as_slice()).unwrap();
        let f = &tile.layers[0].features[0];
        assert_eq!(f.id, Some(7));
        // MoveTo(1), zig-zag x, zig-zag y.
        let zz = |v: u32| ((v >> 1) as i64) ^ -((v & 1) as i64);
        let (px, py) = (zz(f.geometry[1]), zz(f.geometry[2]));
        assert!((0..4096).contains(&px) && (0..4096).contains(&py));
        let (lo, la) = tile_to_lonlat(t, px as f64, py as f64);
        // One tile unit at z10 is ~30 m.
        assert!((lo - lon).abs() < 0.001 && (la - lat).abs() < 0.001);
        // Elsewhere, nothing is drawn and the tile is empty.
        let mut other = LayerBuilder::new("places", TileId::new(10, 0, 0).unwrap());
        other
            .add(&Draw {
                ord: 7,
                id: None,
                geometry: &g,
                properties: None,
            })
            .unwrap();
        assert!(other.is_empty());
        assert!(other.finish().is_empty());
    }

    #[test]
    fn polygons_are_clipped_to_the_buffer_and_wound_clockwise_on_screen() {
        // A square much larger than tile 4/3/6 (central US).
        let sq = Geometry::Polygon(Polygon::new(
            LineString::from(vec![
                (-110.0, 30.0),
                (-80.0, 30.0),
                (-80.0, 50.0),
                (-110.0, 50.0),
                (-110.0, 30.0),
            ]),
            vec![],
        ));
        let t = TileId::new(4, 3, 6).unwrap();
        let g = to_tile_space(t, &sq).unwrap();
        let Geometry::Polygon(p) = g else {
            panic!("a polygon stays a polygon")
        };
        for c in &p.exterior().0 {
            assert!(c.x >= -64.0 && c.x <= 4160.0 && c.y >= -64.0 && c.y <= 4160.0);
        }
        // Positive shoelace area in y-down space: clockwise on screen.
        let ring = &p.exterior().0;
        let a: f64 = ring
            .windows(2)
            .map(|w| w[0].x * w[1].y - w[1].x * w[0].y)
            .sum();
        assert!(a > 0.0);
    }

    #[test]
    fn properties_keep_their_types() {
        let t = TileId::new(0, 0, 0).unwrap();
        let g = Geometry::Point(Point::new(10.0, 10.0));
        let props: Map<String, Value> = serde_json::from_str(
            r#"{"n":"Topeka","pop":126587,"ratio":0.5,"ok":true,"gone":null,"tags":["a"]}"#,
        )
        .unwrap();
        let mut b = LayerBuilder::new("l", t);
        b.add(&Draw {
            ord: 0,
            id: Some("x"),
            geometry: &g,
            properties: Some(&props),
        })
        .unwrap();
        let tile = Tile::decode(b.finish().as_slice()).unwrap();
        let l = &tile.layers[0];
        let mut keys = l.keys.clone();
        keys.sort();
        assert_eq!(keys, vec![ID_KEY, "n", "ok", "pop", "ratio", "tags"]);
        assert_eq!(l.features[0].tags.len(), 12);
        assert!(l.values.iter().any(|v| v.sint_value == Some(126_587)));
        assert!(
            l.values
                .iter()
                .any(|v| v.string_value.as_deref() == Some("[\"a\"]"))
        );
    }
}
