//! The `public_generalized` derivative of a sensitive dataset.
//!
//! Each feature's geometry is replaced by one point: its centroid, moved to
//! the centre of the grid cell (N degrees) or H3 cell (resolution R) that
//! holds it. Two properties in the Darwin Core sense say what was done:
//! `dataGeneralizations` (the method, in words) and
//! `coordinateUncertaintyInMeters` (the largest distance between the
//! published point and any point of the original geometry, rounded up), so
//! a user knows how far the truth may be.

use geo::{Centroid, Distance, Haversine, Point};
use geojson::{Feature, Geometry, GeometryValue, JsonValue};
use kfm_core::spec::{Generalization, GeneralizationMethod};

use crate::normalize::for_each_position;

/// A checked generalisation plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    Grid { degrees: f64 },
    H3 { resolution: h3o::Resolution },
}

impl Plan {
    /// Checks a spec's plan: grid degrees in (0, 10], H3 resolution 0–15.
    pub fn from_spec(g: &Generalization) -> Result<Self, String> {
        match g.method {
            GeneralizationMethod::Grid => match g.degrees {
                Some(d) if d.is_finite() && d > 0.0 && d <= 10.0 => Ok(Plan::Grid { degrees: d }),
                Some(d) => Err(format!(
                    "sensitivity.generalization.degrees is {d}: use a grid size in (0, 10] degrees"
                )),
                None => Err(
                    "sensitivity.generalization: method grid needs `degrees` (for example 0.1)"
                        .into(),
                ),
            },
            GeneralizationMethod::H3 => match g.resolution {
                Some(r) => h3o::Resolution::try_from(r)
                    .map(|resolution| Plan::H3 { resolution })
                    .map_err(|_| {
                        format!(
                            "sensitivity.generalization.resolution is {r}: H3 resolutions are 0-15"
                        )
                    }),
                None => Err(
                    "sensitivity.generalization: method h3 needs `resolution` (for example 6)"
                        .into(),
                ),
            },
        }
    }

    /// The method in words, for `dataGeneralizations` and PROV.
    pub fn describe(&self) -> String {
        match self {
            Plan::Grid { degrees } => format!(
                "coordinates replaced by the centre of the {degrees}-degree grid cell holding the feature's centroid"
            ),
            Plan::H3 { resolution } => format!(
                "coordinates replaced by the centre of the H3 resolution {} cell holding the feature's centroid",
                u8::from(*resolution)
            ),
        }
    }

    /// The published point for a centroid, and the corners of the cell that
    /// holds it (to bound the uncertainty).
    fn snap(&self, lon: f64, lat: f64) -> Option<(Point, Vec<Point>)> {
        match *self {
            Plan::Grid { degrees: d } => {
                let x0 = (lon / d).floor() * d;
                let y0 = (lat / d).floor() * d;
                // Round away float noise so equal cells print equally.
                let r = |v: f64| (v * 1e9).round() / 1e9;
                let c = Point::new(r(x0 + d / 2.0), r(y0 + d / 2.0).clamp(-90.0, 90.0));
                let corners = vec![
                    Point::new(x0, y0.max(-90.0)),
                    Point::new(x0 + d, y0.max(-90.0)),
                    Point::new(x0, (y0 + d).min(90.0)),
                    Point::new(x0 + d, (y0 + d).min(90.0)),
                ];
                Some((c, corners))
            }
            Plan::H3 { resolution } => {
                let cell = h3o::LatLng::new(lat, lon).ok()?.to_cell(resolution);
                let centre = h3o::LatLng::from(cell);
                let corners = cell
                    .boundary()
                    .iter()
                    .map(|v| Point::new(v.lng(), v.lat()))
                    .collect();
                Some((Point::new(centre.lng(), centre.lat()), corners))
            }
        }
    }
}

/// Builds the generalised derivative. Features without a geometry keep
/// none; every other feature becomes a Point.
pub fn generalize(features: &[Feature], plan: &Plan) -> Vec<Feature> {
    let describe = plan.describe();
    features
        .iter()
        .map(|f| generalize_one(f, plan, &describe))
        .collect()
}

/// One feature of the generalised derivative (`describe` is
/// [`Plan::describe`], computed once by the caller): the derivative is
/// built feature by feature, so a large dataset streams through it.
pub fn generalize_one(f: &Feature, plan: &Plan, describe: &str) -> Feature {
    let mut out = Feature {
        bbox: None,
        geometry: None,
        id: f.id.clone(),
        properties: None,
        foreign_members: f.foreign_members.clone(),
    };
    let mut props = f.properties.clone().unwrap_or_default();
    if let Some((geometry, uncertainty)) = f.geometry.as_ref().and_then(|g| point_for(g, plan)) {
        out.geometry = Some(geometry);
        props.insert(
            "coordinateUncertaintyInMeters".into(),
            JsonValue::from(uncertainty),
        );
    }
    props.insert(
        "dataGeneralizations".into(),
        JsonValue::from(describe.to_owned()),
    );
    out.properties = Some(props);
    out
}

fn point_for(g: &Geometry, plan: &Plan) -> Option<(Geometry, u64)> {
    let geo: geo::Geometry<f64> = (&g.value).try_into().ok()?;
    let c = geo.centroid()?;
    let (published, corners) = plan.snap(c.x(), c.y())?;
    let mut far = corners
        .iter()
        .map(|p| Haversine.distance(published, *p))
        .fold(0.0_f64, f64::max);
    for_each_position(&g.value, &mut |p| {
        far = far.max(Haversine.distance(published, Point::new(p[0], p[1])));
    });
    let geometry = Geometry::new(GeometryValue::Point {
        coordinates: vec![published.x(), published.y()].into(),
    });
    Some((geometry, far.ceil() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(lon: f64, lat: f64) -> Feature {
        Feature {
            bbox: None,
            geometry: Some(Geometry::new(GeometryValue::Point {
                coordinates: vec![lon, lat].into(),
            })),
            id: None,
            properties: Some(Default::default()),
            foreign_members: None,
        }
    }

    fn coords(f: &Feature) -> (f64, f64) {
        match &f.geometry.as_ref().unwrap().value {
            GeometryValue::Point { coordinates } => (coordinates[0], coordinates[1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grid_moves_points_to_cell_centres_and_bounds_the_error() {
        let plan = Plan::Grid { degrees: 0.1 };
        let out = generalize(&[point(-98.1234, 38.5678), point(-98.1001, 38.5999)], &plan);
        assert_eq!(coords(&out[0]), (-98.15, 38.55));
        assert_eq!(coords(&out[1]), (-98.15, 38.55));
        let u = out[0].properties.as_ref().unwrap()["coordinateUncertaintyInMeters"]
            .as_u64()
            .unwrap();
        // Half the diagonal of a 0.1° cell at 38.5°N is about 7.1 km.
        assert!((6_500..=8_000).contains(&u), "{u}");
        let (lon, lat) = (-98.1234, 38.5678);
        let d = Haversine.distance(Point::new(lon, lat), Point::new(-98.15, 38.55));
        assert!(d <= u as f64);
    }

    #[test]
    fn h3_moves_points_to_cell_centres() {
        let plan = Plan::H3 {
            resolution: h3o::Resolution::try_from(5).unwrap(),
        };
        let out = generalize(&[point(-98.1234, 38.5678)], &plan);
        let (lon, lat) = coords(&out[0]);
        assert_ne!((lon, lat), (-98.1234, 38.5678));
        let u = out[0].properties.as_ref().unwrap()["coordinateUncertaintyInMeters"]
            .as_u64()
            .unwrap();
        let d = Haversine.distance(Point::new(-98.1234, 38.5678), Point::new(lon, lat));
        assert!(d <= u as f64, "{d} > {u}");
        assert!(
            out[0].properties.as_ref().unwrap()["dataGeneralizations"]
                .as_str()
                .unwrap()
                .contains("H3 resolution 5")
        );
    }

    #[test]
    fn plans_are_checked() {
        let g = |m, d: Option<f64>, r: Option<u8>| Generalization {
            method: m,
            degrees: d,
            resolution: r,
        };
        assert!(Plan::from_spec(&g(GeneralizationMethod::Grid, None, None)).is_err());
        assert!(Plan::from_spec(&g(GeneralizationMethod::Grid, Some(0.0), None)).is_err());
        assert!(Plan::from_spec(&g(GeneralizationMethod::H3, None, Some(16))).is_err());
        assert!(Plan::from_spec(&g(GeneralizationMethod::H3, None, Some(7))).is_ok());
    }
}
