//! GeoJSON geometries as EWKB, PostGIS's binary input and output.
//!
//! geozero writes the bytes (`ToWkb::to_ewkb`); this module only walks our
//! GeoJSON geometries through its `GeomProcessor` interface, as geozero's
//! own GeoJSON reader does for the older `geojson` crate it is built on.

use geojson::{GeometryValue, Position};
use geozero::error::Result as GzResult;
use geozero::{CoordDimensions, GeomProcessor, GeozeroGeometry, ToWkb};

/// The SRID of every projected geometry: RFC 7946 coordinates are WGS 84
/// longitude/latitude (CRS84 axis order, stored as EPSG:4326 as PostGIS
/// and every GIS client expect).
pub const SRID: i32 = 4326;

/// Why a geometry cannot be projected.
#[derive(Debug, thiserror::Error)]
pub enum GeomError {
    #[error(
        "positions with and without an altitude in one geometry: PostGIS stores one dimension per geometry; give every position of a feature 2 numbers or every one 3"
    )]
    MixedDimensions,
    #[error("the geometry cannot be written as EWKB: {0}")]
    Encode(String),
    #[error("the EWKB cannot be read: {0}")]
    Decode(String),
}

/// A borrowed GeoJSON geometry, walked for geozero.
struct Walk<'a> {
    value: &'a GeometryValue,
    z: bool,
}

/// 3 if every position has an altitude, 2 if none has; mixed is refused.
fn dims_of(value: &GeometryValue) -> Result<bool, GeomError> {
    let (mut two, mut three) = (false, false);
    kfm_pipeline::normalize::for_each_position(value, &mut |p| {
        if p.len() >= 3 {
            three = true;
        } else {
            two = true;
        }
    });
    if two && three {
        return Err(GeomError::MixedDimensions);
    }
    Ok(three)
}

/// The geometry as EWKB (little-endian, SRID 4326, with Z when the
/// positions carry an altitude): what `ST_AsEWKB(geom, 'NDR')` returns for
/// it once stored.
pub fn ewkb(value: &GeometryValue) -> Result<Vec<u8>, GeomError> {
    let z = dims_of(value)?;
    let dims = if z {
        CoordDimensions::xyz()
    } else {
        CoordDimensions::xy()
    };
    Walk { value, z }
        .to_ewkb(dims, Some(SRID))
        .map_err(|e| GeomError::Encode(e.to_string()))
}

impl GeozeroGeometry for Walk<'_> {
    fn process_geom<P: GeomProcessor>(&self, processor: &mut P) -> GzResult<()> {
        walk(self.value, self.z, 0, processor)
    }

    fn dims(&self) -> CoordDimensions {
        if self.z {
            CoordDimensions::xyz()
        } else {
            CoordDimensions::xy()
        }
    }

    fn srid(&self) -> Option<i32> {
        Some(SRID)
    }
}

/// EWKB (as PostGIS sends a `geometry` in binary) back into a GeoJSON
/// geometry: the inverse of [`ewkb`], exact to the bit (coordinates travel
/// as IEEE doubles both ways), with an altitude where the EWKB has Z.
pub fn decode(bytes: &[u8]) -> Result<geojson::Geometry, GeomError> {
    let mut b = Builder::default();
    geozero::wkb::process_ewkb_geom(&mut std::io::Cursor::new(bytes), &mut b)
        .map_err(|e| GeomError::Decode(e.to_string()))?;
    b.done
        .map(geojson::Geometry::new)
        .ok_or_else(|| GeomError::Decode("no geometry in the EWKB".into()))
}

/// A geometry under construction, innermost last.
enum Frame {
    Point(Option<Position>),
    MultiPoint(Vec<Position>),
    Line(Vec<Position>),
    MultiLine(Vec<Vec<Position>>),
    Polygon(Vec<Vec<Position>>),
    MultiPolygon(Vec<Vec<Vec<Position>>>),
    Collection(Vec<geojson::Geometry>),
}

/// Builds GeoJSON from geozero's events.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    done: Option<GeometryValue>,
}

fn bad(what: &str) -> geozero::error::GeozeroError {
    geozero::error::GeozeroError::Geometry(format!("unexpected {what} in the EWKB"))
}

impl Builder {
    fn position(&mut self, p: Position) -> GzResult<()> {
        match self.stack.last_mut() {
            Some(Frame::Point(slot)) => *slot = Some(p),
            Some(Frame::MultiPoint(v) | Frame::Line(v)) => v.push(p),
            _ => return Err(bad("coordinate")),
        }
        Ok(())
    }

    /// A finished geometry goes into its parent, or is the result.
    fn finish(&mut self, g: GeometryValue) -> GzResult<()> {
        match self.stack.last_mut() {
            Some(Frame::Collection(v)) => v.push(geojson::Geometry::new(g)),
            None => self.done = Some(g),
            _ => return Err(bad("member geometry")),
        }
        Ok(())
    }

    /// A finished ring or line goes into its polygon, multilinestring, or
    /// (tagged) stands alone.
    fn line_end(&mut self, tagged: bool) -> GzResult<()> {
        let Some(Frame::Line(l)) = self.stack.pop() else {
            return Err(bad("end of a line"));
        };
        if tagged {
            return self.finish(GeometryValue::LineString { coordinates: l });
        }
        match self.stack.last_mut() {
            Some(Frame::Polygon(rings)) => rings.push(l),
            Some(Frame::MultiLine(ls)) => ls.push(l),
            _ => return Err(bad("line")),
        }
        Ok(())
    }
}

impl GeomProcessor for Builder {
    fn dimensions(&self) -> CoordDimensions {
        CoordDimensions::xyz()
    }

    fn xy(&mut self, x: f64, y: f64, _idx: usize) -> GzResult<()> {
        self.position(vec![x, y].into())
    }

    fn coordinate(
        &mut self,
        x: f64,
        y: f64,
        z: Option<f64>,
        _m: Option<f64>,
        _t: Option<f64>,
        _tm: Option<u64>,
        _idx: usize,
    ) -> GzResult<()> {
        match z {
            Some(z) => self.position(vec![x, y, z].into()),
            None => self.position(vec![x, y].into()),
        }
    }

    fn point_begin(&mut self, _idx: usize) -> GzResult<()> {
        self.stack.push(Frame::Point(None));
        Ok(())
    }

    fn point_end(&mut self, _idx: usize) -> GzResult<()> {
        let Some(Frame::Point(Some(p))) = self.stack.pop() else {
            return Err(bad("end of a point"));
        };
        self.finish(GeometryValue::Point { coordinates: p })
    }

    fn multipoint_begin(&mut self, size: usize, _idx: usize) -> GzResult<()> {
        self.stack
            .push(Frame::MultiPoint(Vec::with_capacity(size.min(1 << 16))));
        Ok(())
    }

    fn multipoint_end(&mut self, _idx: usize) -> GzResult<()> {
        let Some(Frame::MultiPoint(v)) = self.stack.pop() else {
            return Err(bad("end of a multipoint"));
        };
        self.finish(GeometryValue::MultiPoint { coordinates: v })
    }

    fn linestring_begin(&mut self, _tagged: bool, size: usize, _idx: usize) -> GzResult<()> {
        self.stack
            .push(Frame::Line(Vec::with_capacity(size.min(1 << 16))));
        Ok(())
    }

    fn linestring_end(&mut self, tagged: bool, _idx: usize) -> GzResult<()> {
        self.line_end(tagged)
    }

    fn multilinestring_begin(&mut self, size: usize, _idx: usize) -> GzResult<()> {
        self.stack
            .push(Frame::MultiLine(Vec::with_capacity(size.min(1 << 16))));
        Ok(())
    }

    fn multilinestring_end(&mut self, _idx: usize) -> GzResult<()> {
        let Some(Frame::MultiLine(v)) = self.stack.pop() else {
            return Err(bad("end of a multilinestring"));
        };
        self.finish(GeometryValue::MultiLineString { coordinates: v })
    }

    fn polygon_begin(&mut self, _tagged: bool, size: usize, _idx: usize) -> GzResult<()> {
        self.stack
            .push(Frame::Polygon(Vec::with_capacity(size.min(1 << 16))));
        Ok(())
    }

    fn polygon_end(&mut self, tagged: bool, _idx: usize) -> GzResult<()> {
        let Some(Frame::Polygon(rings)) = self.stack.pop() else {
            return Err(bad("end of a polygon"));
        };
        if tagged {
            return self.finish(GeometryValue::Polygon { coordinates: rings });
        }
        match self.stack.last_mut() {
            Some(Frame::MultiPolygon(v)) => v.push(rings),
            _ => return Err(bad("polygon")),
        }
        Ok(())
    }

    fn multipolygon_begin(&mut self, size: usize, _idx: usize) -> GzResult<()> {
        self.stack
            .push(Frame::MultiPolygon(Vec::with_capacity(size.min(1 << 16))));
        Ok(())
    }

    fn multipolygon_end(&mut self, _idx: usize) -> GzResult<()> {
        let Some(Frame::MultiPolygon(v)) = self.stack.pop() else {
            return Err(bad("end of a multipolygon"));
        };
        self.finish(GeometryValue::MultiPolygon { coordinates: v })
    }

    fn geometrycollection_begin(&mut self, size: usize, _idx: usize) -> GzResult<()> {
        self.stack
            .push(Frame::Collection(Vec::with_capacity(size.min(1 << 16))));
        Ok(())
    }

    fn geometrycollection_end(&mut self, _idx: usize) -> GzResult<()> {
        let Some(Frame::Collection(v)) = self.stack.pop() else {
            return Err(bad("end of a geometry collection"));
        };
        self.finish(GeometryValue::GeometryCollection { geometries: v })
    }
}

fn coord<P: GeomProcessor>(p: &Position, z: bool, idx: usize, out: &mut P) -> GzResult<()> {
    let s = p.as_slice();
    let (x, y) = (s[0], s[1]);
    if z || out.multi_dim() {
        out.coordinate(x, y, s.get(2).copied(), None, None, None, idx)
    } else {
        out.xy(x, y, idx)
    }
}

fn line<P: GeomProcessor>(
    l: &[Position],
    tagged: bool,
    z: bool,
    idx: usize,
    out: &mut P,
) -> GzResult<()> {
    out.linestring_begin(tagged, l.len(), idx)?;
    for (i, p) in l.iter().enumerate() {
        coord(p, z, i, out)?;
    }
    out.linestring_end(tagged, idx)
}

fn polygon<P: GeomProcessor>(
    rings: &[Vec<Position>],
    tagged: bool,
    z: bool,
    idx: usize,
    out: &mut P,
) -> GzResult<()> {
    out.polygon_begin(tagged, rings.len(), idx)?;
    for (i, r) in rings.iter().enumerate() {
        line(r, false, z, i, out)?;
    }
    out.polygon_end(tagged, idx)
}

fn walk<P: GeomProcessor>(g: &GeometryValue, z: bool, idx: usize, out: &mut P) -> GzResult<()> {
    match g {
        GeometryValue::Point { coordinates } => {
            out.point_begin(idx)?;
            coord(coordinates, z, 0, out)?;
            out.point_end(idx)
        }
        GeometryValue::MultiPoint { coordinates } => {
            out.multipoint_begin(coordinates.len(), idx)?;
            for (i, p) in coordinates.iter().enumerate() {
                coord(p, z, i, out)?;
            }
            out.multipoint_end(idx)
        }
        GeometryValue::LineString { coordinates } => line(coordinates, true, z, idx, out),
        GeometryValue::MultiLineString { coordinates } => {
            out.multilinestring_begin(coordinates.len(), idx)?;
            for (i, l) in coordinates.iter().enumerate() {
                line(l, false, z, i, out)?;
            }
            out.multilinestring_end(idx)
        }
        GeometryValue::Polygon { coordinates } => polygon(coordinates, true, z, idx, out),
        GeometryValue::MultiPolygon { coordinates } => {
            out.multipolygon_begin(coordinates.len(), idx)?;
            for (i, p) in coordinates.iter().enumerate() {
                polygon(p, false, z, i, out)?;
            }
            out.multipolygon_end(idx)
        }
        GeometryValue::GeometryCollection { geometries } => {
            out.geometrycollection_begin(geometries.len(), idx)?;
            for (i, m) in geometries.iter().enumerate() {
                walk(&m.value, z, i, out)?;
            }
            out.geometrycollection_end(idx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> GeometryValue {
        serde_json::from_str::<geojson::Geometry>(s).unwrap().value
    }

    #[test]
    fn a_point_is_the_ewkb_postgis_writes() {
        // SELECT ST_AsEWKB('SRID=4326;POINT(10 -20)'::geometry, 'NDR')
        let got = ewkb(&parse(r#"{"type":"Point","coordinates":[10,-20]}"#)).unwrap();
        assert_eq!(
            hex::encode(got),
            "0101000020e6100000000000000000244000000000000034c0"
        );
    }

    #[test]
    fn decoding_gives_back_every_geometry_exactly() {
        for g in [
            r#"{"type":"Point","coordinates":[-98.12345678901234,38.1]}"#,
            r#"{"type":"Point","coordinates":[1.0,2.0,3.5]}"#,
            r#"{"type":"MultiPoint","coordinates":[[1.0,2.0],[3.0,4.0]]}"#,
            r#"{"type":"LineString","coordinates":[[1.0,2.0],[3.0,4.0]]}"#,
            r#"{"type":"MultiLineString","coordinates":[[[1.0,2.0],[3.0,4.0]],[[5.0,6.0],[7.0,8.0]]]}"#,
            r#"{"type":"Polygon","coordinates":[[[0.0,0.0],[1.0,0.0],[1.0,1.0],[0.0,0.0]],[[0.2,0.2],[0.3,0.2],[0.3,0.3],[0.2,0.2]]]}"#,
            r#"{"type":"MultiPolygon","coordinates":[[[[0.0,0.0],[1.0,0.0],[1.0,1.0],[0.0,0.0]]],[[[5.0,5.0],[6.0,5.0],[6.0,6.0],[5.0,5.0]]]]}"#,
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1.0,2.0]},{"type":"LineString","coordinates":[[1.0,2.0],[3.0,4.0]]}]}"#,
        ] {
            let v = parse(g);
            let back = decode(&ewkb(&v).unwrap()).unwrap();
            assert_eq!(back.value, v, "{g}");
        }
        assert!(decode(b"\x01\x02").is_err());
    }

    #[test]
    fn an_altitude_makes_a_z_geometry_and_mixing_is_refused() {
        let got = ewkb(&parse(r#"{"type":"Point","coordinates":[1,2,3]}"#)).unwrap();
        // type word: Point | Z flag | SRID flag
        assert_eq!(&got[1..5], &0xa000_0001u32.to_le_bytes());
        let mixed = parse(r#"{"type":"LineString","coordinates":[[1,2,3],[4,5]]}"#);
        assert!(matches!(ewkb(&mixed), Err(GeomError::MixedDimensions)));
    }
}
