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
    fn an_altitude_makes_a_z_geometry_and_mixing_is_refused() {
        let got = ewkb(&parse(r#"{"type":"Point","coordinates":[1,2,3]}"#)).unwrap();
        // type word: Point | Z flag | SRID flag
        assert_eq!(&got[1..5], &0xa000_0001u32.to_le_bytes());
        let mixed = parse(r#"{"type":"LineString","coordinates":[[1,2,3],[4,5]]}"#);
        assert!(matches!(ewkb(&mixed), Err(GeomError::MixedDimensions)));
    }
}
