//! A request's conditions, typed: CQL2 (`filter`, text or JSON), `bbox`,
//! `datetime`, property filters and `q`, all as one [`Filter`].
//!
//! A CQL2 expression is parsed by the `cql2` crate and then compiled here
//! against the collection's [`Queryables`]: every property must exist and
//! be compared with a value of its kind, every function must be one this
//! module implements in both readings (memory and SQL). What does not fit
//! is a [`QueryError`] naming it.

use geo::Geometry;
use serde_json::{Map, Value};

use crate::compile::{MAX_DEPTH, compile, err, nesting};
use crate::like::Pattern;
use crate::queryables::{Kind, Queryables};
use crate::terms::Search;
use crate::time::{Interval, Micros};
use crate::{QueryError, quote};

/// The three classes of comparable values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Str,
    Num,
    Bool,
}

impl Class {
    pub(crate) fn of_kind(k: Kind) -> Option<Class> {
        match k {
            Kind::String => Some(Class::Str),
            Kind::Integer | Kind::Number => Some(Class::Num),
            Kind::Boolean => Some(Class::Bool),
            Kind::Mixed => None,
        }
    }

    pub(crate) fn words(self) -> &'static str {
        match self {
            Class::Str => "a string",
            Class::Num => "a number",
            Class::Bool => "a boolean",
        }
    }
}

/// A comparable value.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A property's value when it is of `class` (else unknown); `casei`
    /// lowers its ASCII letters, as PostgreSQL's `lower` under the "C"
    /// collation does.
    Prop {
        name: String,
        class: Class,
        casei: bool,
    },
    Lit(Scalar),
}

impl Operand {
    pub(crate) fn class(&self) -> Class {
        match self {
            Operand::Prop { class, .. } => *class,
            Operand::Lit(Scalar::Str(_)) => Class::Str,
            Operand::Lit(Scalar::Num(_)) => Class::Num,
            Operand::Lit(Scalar::Bool(_)) => Class::Bool,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    pub(crate) fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            o => o,
        }
    }
}

/// The DE-9IM predicates of CQL2's spatial functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpatialOp {
    Intersects,
    Disjoint,
    Within,
    Contains,
    Equals,
    Touches,
    Overlaps,
    Crosses,
}

impl SpatialOp {
    pub(crate) fn parse(op: &str) -> Option<SpatialOp> {
        Some(match op {
            "s_intersects" => SpatialOp::Intersects,
            "s_disjoint" => SpatialOp::Disjoint,
            "s_within" => SpatialOp::Within,
            "s_contains" => SpatialOp::Contains,
            "s_equals" => SpatialOp::Equals,
            "s_touches" => SpatialOp::Touches,
            "s_overlaps" => SpatialOp::Overlaps,
            "s_crosses" => SpatialOp::Crosses,
            _ => return None,
        })
    }

    /// The same predicate with its arguments swapped.
    pub(crate) fn flipped(self) -> SpatialOp {
        match self {
            SpatialOp::Within => SpatialOp::Contains,
            SpatialOp::Contains => SpatialOp::Within,
            o => o,
        }
    }

    pub(crate) fn sql(self) -> &'static str {
        match self {
            SpatialOp::Intersects => "ST_Intersects",
            SpatialOp::Disjoint => "ST_Disjoint",
            SpatialOp::Within => "ST_Within",
            SpatialOp::Contains => "ST_Contains",
            SpatialOp::Equals => "ST_Equals",
            SpatialOp::Touches => "ST_Touches",
            SpatialOp::Overlaps => "ST_Overlaps",
            SpatialOp::Crosses => "ST_Crosses",
        }
    }
}

/// A condition on the feature's time: `t` above `lo` and below `hi`
/// (inclusive when the flag says so).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeRange {
    pub lo: Option<(Micros, bool)>,
    pub hi: Option<(Micros, bool)>,
}

impl TimeRange {
    pub(crate) fn closed(i: Interval) -> TimeRange {
        TimeRange {
            lo: i.start.map(|s| (s, true)),
            hi: i.end.map(|e| (e, true)),
        }
    }

    pub(crate) fn at(t: Micros) -> TimeRange {
        TimeRange {
            lo: Some((t, true)),
            hi: Some((t, true)),
        }
    }

    /// A range no instant is in (a feature without time stays unknown).
    pub(crate) fn never() -> TimeRange {
        TimeRange {
            lo: Some((1, true)),
            hi: Some((0, true)),
        }
    }

    pub(crate) fn holds(&self, t: Micros) -> bool {
        let lo = self
            .lo
            .is_none_or(|(l, inc)| if inc { t >= l } else { t > l });
        let hi = self
            .hi
            .is_none_or(|(h, inc)| if inc { t <= h } else { t < h });
        lo && hi
    }
}

/// `bbox=minlon,minlat,maxlon,maxlat` (CRS84): features whose bounding box
/// meets it. `minlon > maxlon` crosses the antimeridian.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bbox(pub [f64; 4]);

impl Bbox {
    pub fn parse(v: &str) -> Result<Bbox, QueryError> {
        Self::parse_in(v, crate::Crs::Crs84)
    }

    /// A `bbox` given in `crs` (the `bbox-crs` parameter), as CRS84.
    pub fn parse_in(v: &str, crs: crate::Crs) -> Result<Bbox, QueryError> {
        let parts: Vec<&str> = v.split(',').collect();
        if parts.len() != 4 {
            return Err(QueryError::new(
                "bbox",
                match crs {
                    crate::Crs::Crs84 => {
                        "bbox must be four numbers: minlon,minlat,maxlon,maxlat (CRS84)"
                    }
                    crate::Crs::Epsg4326 => {
                        "bbox must be four numbers: minlat,minlon,maxlat,maxlon (EPSG:4326)"
                    }
                    crate::Crs::Epsg3857 => {
                        "bbox must be four numbers: minx,miny,maxx,maxy (EPSG:3857 metres)"
                    }
                },
            ));
        }
        let mut b = [0.0; 4];
        for (i, p) in parts.iter().enumerate() {
            b[i] = match p.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    return Err(QueryError::new(
                        "bbox",
                        format!("bbox value {} is not a number", i + 1),
                    ));
                }
            };
        }
        let (w, s) = crs.to_crs84(b[0], b[1]);
        let (e, n) = crs.to_crs84(b[2], b[3]);
        let b = [w, s, e, n];
        if !(-180.0..=180.0).contains(&b[0]) || !(-180.0..=180.0).contains(&b[2]) {
            return Err(QueryError::new(
                "bbox",
                "bbox longitudes must be within [-180, 180]",
            ));
        }
        if !(-90.0..=90.0).contains(&b[1]) || !(-90.0..=90.0).contains(&b[3]) || b[1] > b[3] {
            return Err(QueryError::new(
                "bbox",
                "bbox latitudes must be within [-90, 90] with minlat <= maxlat",
            ));
        }
        Ok(Bbox(b))
    }

    /// Whether a feature's bounding box meets this one.
    pub fn meets(&self, b: &[f64; 4]) -> bool {
        let q = &self.0;
        let lat = b[1] <= q[3] && b[3] >= q[1];
        let lon = if q[0] <= q[2] {
            b[0] <= q[2] && b[2] >= q[0]
        } else {
            b[2] >= q[0] || b[0] <= q[2]
        };
        lat && lon
    }
}

/// What a property test can name: a property, or the feature's geometry.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Prop(String),
    Geometry,
}

/// A request's conditions.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Bool(bool),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cmp {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    Like {
        operand: Operand,
        pattern: String,
        #[doc(hidden)]
        matcher: Pattern,
    },
    IsNull(Target),
    /// The feature's geometry against a literal one.
    Spatial {
        op: SpatialOp,
        geometry: Geometry<f64>,
        ewkb: Vec<u8>,
    },
    Time(TimeRange),
    Bbox(Bbox),
    /// `q=`: the search terms, matched in these properties only.
    Terms {
        search: Search,
        allowed: Vec<String>,
    },
}

/// What a feature offers a filter (the in-memory reading).
pub struct Subject<'a> {
    pub props: Option<&'a Map<String, Value>>,
    /// Present when the feature has a geometry (converted only if the
    /// filter [needs](Filter::needs_geometry) it).
    pub geometry: Option<&'a Geometry<f64>>,
    pub bbox: Option<&'a [f64; 4]>,
    pub time: Option<Micros>,
    /// The feature's search terms, sorted ([`crate::terms::terms`]).
    pub terms: &'a [String],
}

/// The encoding of `filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterLang {
    Text,
    Json,
}

impl FilterLang {
    pub fn parse(v: Option<&str>) -> Result<FilterLang, QueryError> {
        match v {
            None | Some("cql2-text") => Ok(FilterLang::Text),
            Some("cql2-json") => Ok(FilterLang::Json),
            Some(o) => Err(QueryError::new(
                "filter-lang",
                format!("{} is not supported: use cql2-text or cql2-json", quote(o)),
            )),
        }
    }
}

/// The CRS of a filter's literal geometries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterCrs {
    /// Longitude, latitude (the default).
    Crs84,
    /// EPSG:4326 as OGC defines it: latitude, longitude.
    Epsg4326,
}

impl FilterCrs {
    pub fn parse(v: Option<&str>) -> Result<FilterCrs, QueryError> {
        match v {
            None | Some("http://www.opengis.net/def/crs/OGC/1.3/CRS84") => Ok(FilterCrs::Crs84),
            Some("http://www.opengis.net/def/crs/EPSG/0/4326") => Ok(FilterCrs::Epsg4326),
            Some(o) => Err(QueryError::new(
                "filter-crs",
                format!(
                    "{} is not supported: use http://www.opengis.net/def/crs/OGC/1.3/CRS84 (the default) or http://www.opengis.net/def/crs/EPSG/0/4326",
                    quote(o)
                ),
            )),
        }
    }
}

/// What a filter is typed against.
pub struct Context<'a> {
    pub queryables: &'a Queryables,
    /// The property that holds each feature's time, if the collection has one.
    pub temporal: Option<&'a str>,
    pub crs: FilterCrs,
}

impl Filter {
    /// Parses and types a `filter` parameter.
    pub fn parse(text: &str, lang: FilterLang, ctx: &Context<'_>) -> Result<Filter, QueryError> {
        if nesting(text) > MAX_DEPTH {
            return Err(err(format!(
                "the filter nests deeper than {MAX_DEPTH} levels"
            )));
        }
        // The parser is another crate's: a panic in it is a refused
        // filter, never a crashed request.
        let parsed = std::panic::catch_unwind(|| match lang {
            FilterLang::Text => cql2::parse_text(text).map_err(|e| e.to_string()),
            FilterLang::Json => cql2::parse_json(text).map_err(|e| e.to_string()),
        })
        .map_err(|_| err("the filter could not be parsed"))?;
        let expr = parsed.map_err(|e| {
            err(format!(
                "not valid CQL2 {}: {}",
                match lang {
                    FilterLang::Text => "text",
                    FilterLang::Json => "JSON",
                },
                e.chars().take(200).collect::<String>()
            ))
        })?;
        let mut nodes = 0;
        compile(&expr, ctx, 0, &mut nodes)
    }

    /// A property filter (`?name=value`): equality with the value read as
    /// the property's kind.
    pub fn property(name: &str, value: &str, q: &Queryables) -> Result<Filter, QueryError> {
        let bad = |what: &str| {
            QueryError::new(
                "property filter",
                format!("{name} holds {what}; {} is not one", quote(value)),
            )
        };
        let (class, lit) = match q.kind(name) {
            Some(Kind::String) => (Class::Str, Scalar::Str(value.to_owned())),
            Some(Kind::Integer | Kind::Number) => match value.parse::<f64>() {
                Ok(f) if f.is_finite() => (Class::Num, Scalar::Num(f)),
                _ => return Err(bad("numbers")),
            },
            Some(Kind::Boolean) => match value {
                "true" => (Class::Bool, Scalar::Bool(true)),
                "false" => (Class::Bool, Scalar::Bool(false)),
                _ => return Err(bad("booleans (true or false)")),
            },
            Some(Kind::Mixed) => {
                return Err(QueryError::new(
                    "property filter",
                    format!("{name} holds values of several kinds and cannot be compared"),
                ));
            }
            None => {
                return Err(QueryError::new(
                    "property filter",
                    format!("unknown property {}", quote(name)),
                ));
            }
        };
        Ok(Filter::Cmp {
            left: Operand::Prop {
                name: name.to_owned(),
                class,
                casei: false,
            },
            op: CmpOp::Eq,
            right: Operand::Lit(lit),
        })
    }

    /// `datetime=`: the feature's time within the interval.
    pub fn datetime(i: Interval) -> Filter {
        Filter::Time(TimeRange::closed(i))
    }

    /// All of `parts` (one condition, or none: `TRUE`).
    pub fn all(mut parts: Vec<Filter>) -> Filter {
        match parts.len() {
            0 => Filter::Bool(true),
            1 => parts.remove(0),
            _ => Filter::And(parts),
        }
    }

    /// Whether the in-memory reading needs the features' geometries.
    pub fn needs_geometry(&self) -> bool {
        self.any(&|f| matches!(f, Filter::Spatial { .. } | Filter::IsNull(Target::Geometry)))
    }

    /// Whether it needs the features' search terms.
    pub fn needs_terms(&self) -> bool {
        self.any(&|f| matches!(f, Filter::Terms { .. }))
    }

    /// Whether it needs the features' times.
    pub fn needs_time(&self) -> bool {
        self.any(&|f| matches!(f, Filter::Time(_)))
    }

    fn any(&self, p: &dyn Fn(&Filter) -> bool) -> bool {
        p(self)
            || match self {
                Filter::And(v) | Filter::Or(v) => v.iter().any(|f| f.any(p)),
                Filter::Not(f) => f.any(p),
                _ => false,
            }
    }
}
