//! The in-memory reading of a [`Filter`]: SQL's three-valued logic
//! (`None` is unknown), with each test defined as the SQL reading defines
//! it, so that a row is kept in memory exactly when PostgreSQL keeps it.

use std::cmp::Ordering;

use geo::Relate;
use serde_json::Value;

use crate::filter::{Class, CmpOp, Filter, Operand, Scalar, SpatialOp, Subject, Target};

/// The typed value of property `name` of class `class`: `None` when it is
/// missing, null or of another JSON type (the SQL reading's `CASE`).
pub(crate) fn typed_value(
    props: Option<&serde_json::Map<String, Value>>,
    name: &str,
    class: Class,
) -> Option<Scalar> {
    let v = props?.get(name)?;
    match (class, v) {
        (Class::Str, Value::String(s)) => Some(Scalar::Str(s.clone())),
        (Class::Num, Value::Number(n)) => n.as_f64().map(Scalar::Num),
        (Class::Bool, Value::Bool(b)) => Some(Scalar::Bool(*b)),
        _ => None,
    }
}

impl Operand {
    fn value(&self, s: &Subject<'_>) -> Option<Scalar> {
        match self {
            Operand::Lit(v) => Some(v.clone()),
            Operand::Prop { name, class, casei } => {
                let v = typed_value(s.props, name, *class)?;
                Some(match v {
                    // PostgreSQL's lower() under the "C" collation: ASCII only.
                    Scalar::Str(t) if *casei => Scalar::Str(t.to_ascii_lowercase()),
                    v => v,
                })
            }
        }
    }
}

/// The order of two values of one class, as PostgreSQL orders them
/// (strings byte by byte, as under the "C" collation; -0 = 0).
pub(crate) fn compare(a: &Scalar, b: &Scalar) -> Option<Ordering> {
    match (a, b) {
        (Scalar::Str(x), Scalar::Str(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Scalar::Num(x), Scalar::Num(y)) => x.partial_cmp(y),
        (Scalar::Bool(x), Scalar::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn and(parts: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for p in parts {
        match p {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

fn or(parts: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for p in parts {
        match p {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    if unknown { None } else { Some(false) }
}

impl Filter {
    /// True, false or unknown (`None`) for one feature. A feature is in
    /// the answer only when this is `Some(true)`, as SQL's `WHERE` keeps a
    /// row only when its condition is true.
    pub fn eval(&self, s: &Subject<'_>) -> Option<bool> {
        match self {
            Filter::Bool(b) => Some(*b),
            Filter::And(v) => and(v.iter().map(|f| f.eval(s))),
            Filter::Or(v) => or(v.iter().map(|f| f.eval(s))),
            Filter::Not(f) => f.eval(s).map(|b| !b),
            Filter::Cmp { left, op, right } => {
                let (a, b) = (left.value(s)?, right.value(s)?);
                let o = compare(&a, &b)?;
                Some(match op {
                    CmpOp::Eq => o == Ordering::Equal,
                    CmpOp::Ne => o != Ordering::Equal,
                    CmpOp::Lt => o == Ordering::Less,
                    CmpOp::Le => o != Ordering::Greater,
                    CmpOp::Gt => o == Ordering::Greater,
                    CmpOp::Ge => o != Ordering::Less,
                })
            }
            Filter::Like {
                operand, matcher, ..
            } => match operand.value(s)? {
                Scalar::Str(v) => Some(matcher.matches(&v)),
                _ => None,
            },
            Filter::IsNull(Target::Prop(name)) => {
                Some(s.props.and_then(|p| p.get(name)).is_none_or(Value::is_null))
            }
            Filter::IsNull(Target::Geometry) => Some(s.geometry.is_none()),
            Filter::Spatial { op, geometry, .. } => {
                let g = s.geometry?;
                let m = g.relate(geometry);
                Some(match op {
                    SpatialOp::Intersects => m.is_intersects(),
                    SpatialOp::Disjoint => m.is_disjoint(),
                    SpatialOp::Within => m.is_within(),
                    SpatialOp::Contains => m.is_contains(),
                    SpatialOp::Equals => m.is_equal_topo(),
                    SpatialOp::Touches => m.is_touches(),
                    SpatialOp::Overlaps => m.is_overlaps(),
                    SpatialOp::Crosses => m.is_crosses(),
                })
            }
            Filter::Time(r) => s.time.map(|t| r.holds(t)),
            Filter::Bbox(b) => s.bbox.map(|fb| b.meets(fb)),
            Filter::Terms { search, allowed } => Some(search.matches(s.terms, allowed)),
        }
    }
}
