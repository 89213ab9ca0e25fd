//! CQL2 compiled into a [`Filter`]: the `cql2` crate's expression tree
//! walked and typed against the collection's queryables. Anything this
//! crate cannot evaluate in both readings (memory and SQL) is refused here,
//! naming what was asked.

use geo::{Coord, CoordsIter, Geometry, MapCoords, Rect};

use crate::filter::{
    Class, CmpOp, Context, Filter, FilterCrs, Operand, Scalar, SpatialOp, Target, TimeRange,
};
use crate::like::Pattern;
use crate::queryables::Kind;
use crate::time::{self, Interval};
use crate::{QueryError, quote};

/// How deep a filter may nest, and how many nodes it may have: a bound on
/// the work one request can ask for (and on recursion).
pub(crate) const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 400;
/// Values an `IN` list may hold.
const MAX_IN: usize = 100;

pub(crate) fn err(message: impl Into<String>) -> QueryError {
    QueryError::new("filter", message)
}

/// One side of a comparison before it is typed.
pub(crate) enum Side {
    Prop { name: String, casei: bool },
    Lit(Scalar),
    Time(Interval),
}

/// The deepest nesting of brackets and braces in a filter's text.
pub(crate) fn nesting(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

pub(crate) fn compile(
    e: &cql2::Expr,
    ctx: &Context<'_>,
    depth: usize,
    nodes: &mut usize,
) -> Result<Filter, QueryError> {
    use cql2::Expr;
    *nodes += 1;
    if depth > MAX_DEPTH || *nodes > MAX_NODES {
        return Err(err(format!(
            "the filter is too large (at most {MAX_NODES} terms, {MAX_DEPTH} levels)"
        )));
    }
    let sub = |e: &Expr, nodes: &mut usize| compile(e, ctx, depth + 1, nodes);
    match e {
        Expr::Bool(b) => Ok(Filter::Bool(*b)),
        Expr::Operation { op, args } => {
            let lower = op.to_ascii_lowercase();
            match lower.as_str() {
                "and" | "or" => {
                    let mut parts = Vec::with_capacity(args.len());
                    for a in args {
                        parts.push(sub(a, nodes)?);
                    }
                    Ok(if lower == "and" {
                        Filter::And(parts)
                    } else {
                        Filter::Or(parts)
                    })
                }
                "not" => {
                    let [a] = arity::<1>(op, args)?;
                    Ok(Filter::Not(Box::new(sub(a, nodes)?)))
                }
                "=" | "<>" | "<" | "<=" | ">" | ">=" => {
                    let [a, b] = arity::<2>(op, args)?;
                    let cmp = match lower.as_str() {
                        "=" => CmpOp::Eq,
                        "<>" => CmpOp::Ne,
                        "<" => CmpOp::Lt,
                        "<=" => CmpOp::Le,
                        ">" => CmpOp::Gt,
                        _ => CmpOp::Ge,
                    };
                    comparison(a, cmp, b, ctx)
                }
                "between" => {
                    let [x, lo, hi] = arity::<3>(op, args)?;
                    Ok(Filter::And(vec![
                        comparison(x, CmpOp::Ge, lo, ctx)?,
                        comparison(x, CmpOp::Le, hi, ctx)?,
                    ]))
                }
                "in" => {
                    let [x, list] = arity::<2>(op, args)?;
                    let Expr::Array(items) = list else {
                        return Err(err("IN takes a list: name IN ('a', 'b')"));
                    };
                    if items.len() > MAX_IN {
                        return Err(err(format!("an IN list holds at most {MAX_IN} values")));
                    }
                    let mut parts = Vec::with_capacity(items.len());
                    for i in items {
                        parts.push(comparison(x, CmpOp::Eq, i, ctx)?);
                    }
                    Ok(Filter::Or(parts))
                }
                "like" => {
                    let [x, p] = arity::<2>(op, args)?;
                    let operand = match side(x)? {
                        Side::Prop { name, casei } => typed(&name, casei, ctx)?,
                        _ => return Err(err("LIKE tests a property: name LIKE 'Abi%'")),
                    };
                    if operand.class() != Class::Str {
                        return Err(err(format!(
                            "LIKE needs a string property; {} is not one",
                            prop_name(&operand)
                        )));
                    }
                    let pattern = match side(p)? {
                        Side::Lit(Scalar::Str(s)) => match &operand {
                            Operand::Prop { casei: true, .. } => s.to_ascii_lowercase(),
                            _ => s,
                        },
                        _ => return Err(err("LIKE takes a quoted pattern: name LIKE 'Abi%'")),
                    };
                    let matcher = Pattern::parse(&pattern).map_err(err)?;
                    Ok(Filter::Like {
                        operand,
                        pattern,
                        matcher,
                    })
                }
                "isnull" => {
                    let [x] = arity::<1>(op, args)?;
                    match x {
                        Expr::Property { property } if property == "geometry" => {
                            Ok(Filter::IsNull(Target::Geometry))
                        }
                        Expr::Property { property } => {
                            known(property, ctx)?;
                            Ok(Filter::IsNull(Target::Prop(property.clone())))
                        }
                        _ => Err(err("IS NULL tests a property: name IS NULL")),
                    }
                }
                s if SpatialOp::parse(s).is_some() => {
                    let [a, b] = arity::<2>(op, args)?;
                    spatial(
                        SpatialOp::parse(s).unwrap_or(SpatialOp::Intersects),
                        a,
                        b,
                        ctx,
                    )
                }
                s if s.starts_with("t_") => {
                    let [a, b] = arity::<2>(op, args)?;
                    temporal(s, a, b, ctx)
                }
                "casei" | "accenti" => Err(err(format!(
                    "{} is used inside a comparison: CASEI(name) = CASEI('abilene')",
                    op.to_ascii_uppercase()
                ))),
                "+" | "-" | "*" | "/" | "%" | "^" | "div" => Err(err(format!(
                    "arithmetic ({op}) is not supported in filters"
                ))),
                _ => Err(err(format!(
                    "unknown function {}: supported are AND, OR, NOT, comparisons, LIKE, BETWEEN, IN, IS NULL, CASEI, S_INTERSECTS, S_DISJOINT, S_WITHIN, S_CONTAINS, S_EQUALS, S_TOUCHES, S_OVERLAPS, S_CROSSES, T_INTERSECTS, T_DISJOINT, T_BEFORE, T_AFTER, T_DURING, T_EQUALS",
                    quote(op)
                ))),
            }
        }
        Expr::Property { property } => Err(err(format!(
            "{} alone is not a condition: compare it (name = 'x') or test it (name IS NULL)",
            quote(property)
        ))),
        _ => Err(err(
            "a filter must be a condition, such as name = 'Abilene'",
        )),
    }
}

fn arity<'a, const N: usize>(
    op: &str,
    args: &'a [Box<cql2::Expr>],
) -> Result<[&'a cql2::Expr; N], QueryError> {
    let v: Vec<&cql2::Expr> = args.iter().map(|b| b.as_ref()).collect();
    v.try_into()
        .map_err(|_| err(format!("{op} takes {N} argument(s)")))
}

fn prop_name(o: &Operand) -> String {
    match o {
        Operand::Prop { name, .. } => quote(name),
        Operand::Lit(_) => "a literal".into(),
    }
}

/// Checks that `name` is a queryable; the error lists what is.
fn known(name: &str, ctx: &Context<'_>) -> Result<Kind, QueryError> {
    ctx.queryables.kind(name).ok_or_else(|| {
        let mut names: Vec<&str> = ctx.queryables.names().take(20).collect();
        names.push("geometry");
        err(format!(
            "unknown property {}: this collection's queryables are {} (see its /queryables)",
            quote(name),
            names.join(", ")
        ))
    })
}

fn typed(name: &str, casei: bool, ctx: &Context<'_>) -> Result<Operand, QueryError> {
    let kind = known(name, ctx)?;
    let class = Class::of_kind(kind).ok_or_else(|| {
        err(format!(
            "{} holds values of several kinds and cannot be compared (IS NULL works)",
            quote(name)
        ))
    })?;
    if casei && class != Class::Str {
        return Err(err(format!(
            "CASEI needs a string; {} holds {}s",
            quote(name),
            kind.as_str()
        )));
    }
    Ok(Operand::Prop {
        name: name.to_owned(),
        class,
        casei,
    })
}

fn side(e: &cql2::Expr) -> Result<Side, QueryError> {
    use cql2::Expr;
    Ok(match e {
        Expr::Property { property } => Side::Prop {
            name: property.clone(),
            casei: false,
        },
        Expr::Literal(s) => Side::Lit(Scalar::Str(s.clone())),
        Expr::Float(f) if f.is_finite() => Side::Lit(Scalar::Num(*f)),
        Expr::Bool(b) => Side::Lit(Scalar::Bool(*b)),
        Expr::Operation { op, args } if op.eq_ignore_ascii_case("casei") => {
            let [a] = arity::<1>(op, args)?;
            match side(a)? {
                Side::Prop { name, .. } => Side::Prop { name, casei: true },
                Side::Lit(Scalar::Str(s)) => Side::Lit(Scalar::Str(s.to_ascii_lowercase())),
                _ => return Err(err("CASEI takes a string property or a string")),
            }
        }
        Expr::Timestamp { timestamp: t } | Expr::Date { date: t } => match t.as_ref() {
            Expr::Literal(s) => {
                let at = time::literal(s, false)?
                    .ok_or_else(|| err("a TIMESTAMP or DATE cannot be open (..)"))?;
                Side::Time(Interval {
                    start: Some(at),
                    end: Some(at),
                })
            }
            _ => return Err(err("TIMESTAMP and DATE take a quoted value")),
        },
        Expr::Interval { interval } => {
            let [a, b] =
                <[&Expr; 2]>::try_from(interval.iter().map(|b| b.as_ref()).collect::<Vec<_>>())
                    .map_err(|_| err("INTERVAL takes a start and an end"))?;
            let bound = |x: &Expr, end: bool| match x {
                Expr::Literal(s) => time::literal(s, end),
                Expr::Timestamp { timestamp: t } | Expr::Date { date: t } => match t.as_ref() {
                    Expr::Literal(s) => time::literal(s, end),
                    _ => Err(err("an INTERVAL's ends are quoted instants or '..'")),
                },
                _ => Err(err("an INTERVAL's ends are quoted instants or '..'")),
            };
            let (start, end) = (bound(a, false)?, bound(b, true)?);
            if let (Some(s), Some(e)) = (start, end)
                && s > e
            {
                return Err(err("the INTERVAL ends before it starts"));
            }
            Side::Time(Interval { start, end })
        }
        Expr::Null => {
            return Err(err(
                "NULL cannot be compared (the answer is never true): use name IS NULL",
            ));
        }
        Expr::Operation { op, .. }
            if ["+", "-", "*", "/", "%", "^", "div"].contains(&op.as_str()) =>
        {
            return Err(err(format!(
                "arithmetic ({op}) is not supported in filters"
            )));
        }
        Expr::Operation { op, .. } => {
            return Err(err(format!(
                "unknown function {}: a comparison takes properties and literals (CASEI is the one function allowed in one)",
                quote(op)
            )));
        }
        Expr::Float(_) => return Err(err("numbers must be finite")),
        _ => {
            return Err(err(
                "a comparison takes properties and literals (strings, numbers, booleans, TIMESTAMP, DATE, INTERVAL)",
            ));
        }
    })
}

fn comparison(
    a: &cql2::Expr,
    op: CmpOp,
    b: &cql2::Expr,
    ctx: &Context<'_>,
) -> Result<Filter, QueryError> {
    let (sa, sb) = (side(a)?, side(b)?);
    // The feature's time against an instant.
    match (&sa, &sb) {
        (Side::Prop { name, .. }, Side::Time(i)) => return time_cmp(name, op, *i, ctx),
        (Side::Time(i), Side::Prop { name, .. }) => {
            return time_cmp(name, op.flipped(), *i, ctx);
        }
        (Side::Time(_), _) | (_, Side::Time(_)) => {
            return Err(err(
                "a TIMESTAMP or DATE is compared with the collection's time property",
            ));
        }
        _ => {}
    }
    let operand = |s: Side| -> Result<Operand, QueryError> {
        match s {
            Side::Prop { name, casei } => typed(&name, casei, ctx),
            Side::Lit(v) => Ok(Operand::Lit(v)),
            Side::Time(_) => Err(err("unreachable")),
        }
    };
    let (left, right) = (operand(sa)?, operand(sb)?);
    if left.class() != right.class() {
        let (p, other) = if matches!(left, Operand::Prop { .. }) {
            (&left, &right)
        } else {
            (&right, &left)
        };
        let plural = match p.class() {
            Class::Str => "strings",
            Class::Num => "numbers",
            Class::Bool => "booleans",
        };
        return Err(err(format!(
            "{} holds {plural}; it cannot be compared with {}",
            prop_name(p),
            other.class().words()
        )));
    }
    Ok(Filter::Cmp { left, op, right })
}

fn temporal_prop(name: &str, ctx: &Context<'_>) -> Result<(), QueryError> {
    match ctx.temporal {
        Some(t) if t == name => Ok(()),
        Some(t) => Err(err(format!(
            "{} is not this collection's time property; {} is",
            quote(name),
            quote(t)
        ))),
        None => Err(err(
            "this collection has no time property, so no temporal condition applies",
        )),
    }
}

fn time_cmp(name: &str, op: CmpOp, i: Interval, ctx: &Context<'_>) -> Result<Filter, QueryError> {
    temporal_prop(name, ctx)?;
    let at = i.start.unwrap_or(0);
    Ok(match op {
        CmpOp::Eq => Filter::Time(TimeRange::at(at)),
        CmpOp::Ne => Filter::Not(Box::new(Filter::Time(TimeRange::at(at)))),
        CmpOp::Lt => Filter::Time(TimeRange {
            lo: None,
            hi: Some((at, false)),
        }),
        CmpOp::Le => Filter::Time(TimeRange {
            lo: None,
            hi: Some((at, true)),
        }),
        CmpOp::Gt => Filter::Time(TimeRange {
            lo: Some((at, false)),
            hi: None,
        }),
        CmpOp::Ge => Filter::Time(TimeRange {
            lo: Some((at, true)),
            hi: None,
        }),
    })
}

fn temporal(
    op: &str,
    a: &cql2::Expr,
    b: &cql2::Expr,
    ctx: &Context<'_>,
) -> Result<Filter, QueryError> {
    let (sa, sb) = (side(a)?, side(b)?);
    let (name, lit, flipped) = match (sa, sb) {
        (Side::Prop { name, .. }, Side::Time(i)) => (name, i, false),
        (Side::Time(i), Side::Prop { name, .. }) => (name, i, true),
        _ => {
            return Err(err(format!(
                "{} compares the collection's time property with a TIMESTAMP, DATE or INTERVAL",
                op.to_ascii_uppercase()
            )));
        }
    };
    temporal_prop(&name, ctx)?;
    let op = match (op, flipped) {
        ("t_before", true) => "t_after",
        ("t_after", true) => "t_before",
        ("t_during", true) => "t_contains",
        (o, _) => o,
    };
    let instant = lit.start == lit.end && lit.start.is_some();
    let range = match op {
        "t_intersects" => TimeRange::closed(lit),
        "t_disjoint" => return Ok(Filter::Not(Box::new(Filter::Time(TimeRange::closed(lit))))),
        "t_equals" if instant => TimeRange::closed(lit),
        "t_equals" => TimeRange::never(),
        "t_before" => match lit.start {
            Some(s) => TimeRange {
                lo: None,
                hi: Some((s, false)),
            },
            None => TimeRange::never(),
        },
        "t_after" => match lit.end {
            Some(e) => TimeRange {
                lo: Some((e, false)),
                hi: None,
            },
            None => TimeRange::never(),
        },
        "t_during" if !instant => TimeRange {
            lo: lit.start.map(|s| (s, false)),
            hi: lit.end.map(|e| (e, false)),
        },
        // An instant is during no instant, and contains no interval.
        "t_during" | "t_contains" => TimeRange::never(),
        o => {
            return Err(err(format!(
                "{} is not supported: use T_INTERSECTS, T_DISJOINT, T_BEFORE, T_AFTER, T_DURING or T_EQUALS",
                o.to_ascii_uppercase()
            )));
        }
    };
    Ok(Filter::Time(range))
}

/// A literal geometry: GeoJSON (cql2-json) or WKT (cql2-text, which the
/// `cql2` crate serialises as GeoJSON), or a BBOX.
fn literal_geometry(e: &cql2::Expr, crs: FilterCrs) -> Result<Option<Geometry<f64>>, QueryError> {
    use cql2::Expr;
    let g: Geometry<f64> = match e {
        Expr::Geometry(g) => {
            let v = serde_json::to_value(g)
                .map_err(|e| err(format!("the geometry cannot be read: {e}")))?;
            let gj: geojson::Geometry = serde_json::from_value(v)
                .map_err(|e| err(format!("the geometry cannot be read: {e}")))?;
            Geometry::<f64>::try_from(&gj.value)
                .map_err(|e| err(format!("the geometry cannot be used: {e}")))?
        }
        Expr::BBox { bbox } => {
            let n: Vec<f64> = bbox
                .iter()
                .map(|b| match b.as_ref() {
                    Expr::Float(f) if f.is_finite() => Ok(*f),
                    _ => Err(err("a BBOX takes four (or six) numbers")),
                })
                .collect::<Result<_, _>>()?;
            let (x0, y0, x1, y1) = match n.as_slice() {
                [a, b, c, d] => (*a, *b, *c, *d),
                [a, b, _, d, e, _] => (*a, *b, *d, *e),
                _ => return Err(err("a BBOX takes four (or six) numbers")),
            };
            Geometry::Polygon(
                Rect::new(Coord { x: x0, y: y0 }, Coord { x: x1, y: y1 }).to_polygon(),
            )
        }
        _ => return Ok(None),
    };
    let g = g.map_coords(|c| match crs {
        FilterCrs::Crs84 => c,
        FilterCrs::Epsg4326 => Coord { x: c.y, y: c.x },
    });
    if !g.coords_iter().all(|c| c.x.is_finite() && c.y.is_finite()) {
        return Err(err("a geometry's coordinates must be finite numbers"));
    }
    Ok(Some(g))
}

fn spatial(
    op: SpatialOp,
    a: &cql2::Expr,
    b: &cql2::Expr,
    ctx: &Context<'_>,
) -> Result<Filter, QueryError> {
    use cql2::Expr;
    let is_geom_prop = |e: &Expr| match e {
        Expr::Property { property } if property == "geometry" => Ok(true),
        Expr::Property { property } => Err(err(format!(
            "spatial functions compare the feature geometry, `geometry`; {} is not it",
            quote(property)
        ))),
        _ => Ok(false),
    };
    let (geometry, op) = if is_geom_prop(a)? {
        (literal_geometry(b, ctx.crs)?, op)
    } else if is_geom_prop(b)? {
        (literal_geometry(a, ctx.crs)?, op.flipped())
    } else {
        return Err(err(
            "a spatial function compares `geometry` with a literal geometry or BBOX",
        ));
    };
    let geometry = geometry.ok_or_else(|| {
        err("a spatial function compares `geometry` with a literal geometry (WKT or GeoJSON) or BBOX")
    })?;
    use geozero::{CoordDimensions, ToWkb};
    let ewkb = geometry
        .to_ewkb(CoordDimensions::xy(), Some(4326))
        .map_err(|e| err(format!("the geometry cannot be encoded: {e}")))?;
    Ok(Filter::Spatial { op, geometry, ewkb })
}
