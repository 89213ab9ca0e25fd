//! The coordinate reference systems a client may ask features in (`crs`)
//! and give a `bbox` in (`bbox-crs`), as OGC API – Features Part 2 names
//! them. KFM stores CRS84 (longitude, latitude); the others are the same
//! positions in another axis order (EPSG:4326: latitude first) or
//! projected (EPSG:3857, Web Mercator metres).

use serde_json::Value;

use crate::QueryError;

pub const CRS84: &str = "http://www.opengis.net/def/crs/OGC/1.3/CRS84";
pub const EPSG4326: &str = "http://www.opengis.net/def/crs/EPSG/0/4326";
pub const EPSG3857: &str = "http://www.opengis.net/def/crs/EPSG/0/3857";

/// Every CRS offered, the storage CRS first.
pub const OFFERED: [&str; 3] = [CRS84, EPSG4326, EPSG3857];

const RADIUS: f64 = 6_378_137.0;
/// Web Mercator's square ends here.
const MAX_LAT: f64 = 85.051_128_779_806_59;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crs {
    /// Longitude, latitude (the default and the storage CRS).
    Crs84,
    /// Latitude, longitude, as EPSG defines 4326's axes.
    Epsg4326,
    /// Web Mercator: easting, northing in metres.
    Epsg3857,
}

impl Crs {
    /// The CRS a query parameter names (`param`: `crs` or `bbox-crs`);
    /// absent is CRS84.
    pub fn parse(param: &'static str, v: Option<&str>) -> Result<Crs, QueryError> {
        match v {
            None | Some(CRS84) => Ok(Crs::Crs84),
            Some(EPSG4326) => Ok(Crs::Epsg4326),
            Some(EPSG3857) => Ok(Crs::Epsg3857),
            Some(o) => Err(QueryError::new(
                param,
                format!(
                    "{param} {:?} is not offered: use one of {}",
                    o.chars().take(80).collect::<String>(),
                    OFFERED.join(", ")
                ),
            )),
        }
    }

    pub fn uri(self) -> &'static str {
        match self {
            Crs::Crs84 => CRS84,
            Crs::Epsg4326 => EPSG4326,
            Crs::Epsg3857 => EPSG3857,
        }
    }

    /// A position given in this CRS (in its axis order), as CRS84.
    pub fn to_crs84(self, a: f64, b: f64) -> (f64, f64) {
        match self {
            Crs::Crs84 => (a, b),
            Crs::Epsg4326 => (b, a),
            Crs::Epsg3857 => (
                (a / RADIUS).to_degrees(),
                (2.0 * (b / RADIUS).exp().atan() - std::f64::consts::FRAC_PI_2).to_degrees(),
            ),
        }
    }

    /// A CRS84 position in this CRS (latitudes beyond Web Mercator's
    /// square are clamped to its edge for EPSG:3857).
    pub fn from_crs84(self, lon: f64, lat: f64) -> (f64, f64) {
        match self {
            Crs::Crs84 => (lon, lat),
            Crs::Epsg4326 => (lat, lon),
            Crs::Epsg3857 => {
                let lat = lat.clamp(-MAX_LAT, MAX_LAT);
                (
                    lon.to_radians() * RADIUS,
                    (std::f64::consts::FRAC_PI_4 + lat.to_radians() / 2.0)
                        .tan()
                        .ln()
                        * RADIUS,
                )
            }
        }
    }

    /// Rewrites the positions of a GeoJSON geometry (CRS84) into this CRS,
    /// in place. Anything that is not a position is left as it is.
    pub fn transform_geometry(self, geometry: &mut Value) {
        if self == Crs::Crs84 {
            return;
        }
        match geometry.get_mut("coordinates") {
            Some(c) => self.transform_positions(c),
            None => {
                if let Some(Value::Array(gs)) = geometry.get_mut("geometries") {
                    for g in gs {
                        self.transform_geometry(g);
                    }
                }
            }
        }
    }

    fn transform_positions(self, c: &mut Value) {
        let Value::Array(items) = c else { return };
        let is_position = items.first().is_some_and(Value::is_number);
        if !is_position {
            for i in items {
                self.transform_positions(i);
            }
            return;
        }
        if let (Some(lon), Some(lat)) = (
            items.first().and_then(Value::as_f64),
            items.get(1).and_then(Value::as_f64),
        ) {
            let (a, b) = self.from_crs84(lon, lat);
            if let (Some(a), Some(b)) = (
                serde_json::Number::from_f64(a),
                serde_json::Number::from_f64(b),
            ) {
                items[0] = Value::Number(a);
                items[1] = Value::Number(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_every_crs() {
        for crs in [Crs::Crs84, Crs::Epsg4326, Crs::Epsg3857] {
            let (a, b) = crs.from_crs84(-97.3375, 37.6922);
            let (lon, lat) = crs.to_crs84(a, b);
            assert!(
                (lon + 97.3375).abs() < 1e-9 && (lat - 37.6922).abs() < 1e-9,
                "{crs:?}"
            );
        }
        assert_eq!(Crs::Epsg4326.from_crs84(1.0, 2.0), (2.0, 1.0));
    }

    #[test]
    fn a_geometry_is_rewritten_in_place() {
        let mut g =
            serde_json::json!({"type": "LineString", "coordinates": [[1.0, 2.0], [3.0, 4.0]]});
        Crs::Epsg4326.transform_geometry(&mut g);
        assert_eq!(
            g["coordinates"],
            serde_json::json!([[2.0, 1.0], [4.0, 3.0]])
        );
    }

    #[test]
    fn unknown_crs_is_refused_naming_the_parameter() {
        let e = Crs::parse("bbox-crs", Some("EPSG:4326")).unwrap_err();
        assert_eq!(e.param, "bbox-crs");
        assert!(e.message.contains("not offered"));
    }
}
