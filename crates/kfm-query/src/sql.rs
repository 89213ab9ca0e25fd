//! Parameterised SQL, built by this crate alone.
//!
//! Invariant: nothing a client sends becomes SQL text. Values, property
//! names, patterns, instants and geometries are pushed as [`Param`]s and
//! referenced as `$n` with an explicit cast; the text around them is
//! written here from fixed pieces. The column names are those of a
//! projected table: `ord`, `geom`, `props`, `t` and `terms`.

/// A bound parameter. The database driver (kfm-projection) encodes each in
/// PostgreSQL's binary format for the cast the text gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// `::text`
    Text(String),
    /// `::float8`
    Float(f64),
    /// `::boolean`
    Bool(bool),
    /// `::bigint`
    Int(i64),
    /// `::timestamptz`, microseconds since the Unix epoch.
    Time(i64),
    /// `::geometry`, EWKB with SRID 4326.
    Geom(Vec<u8>),
    /// `::text[]`
    TextArray(Vec<String>),
}

impl Param {
    /// The cast written after the placeholder.
    pub fn cast(&self) -> &'static str {
        match self {
            Param::Text(_) => "text",
            Param::Float(_) => "float8",
            Param::Bool(_) => "boolean",
            Param::Int(_) => "bigint",
            Param::Time(_) => "timestamptz",
            Param::Geom(_) => "geometry",
            Param::TextArray(_) => "text[]",
        }
    }
}

/// SQL text under construction and its parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Param>,
}

impl Sql {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends fixed text (callers pass literals of this crate or of the
    /// projection crate, never request data).
    pub fn push(&mut self, fixed: &str) -> &mut Self {
        self.text.push_str(fixed);
        self
    }

    /// Binds a parameter and returns its placeholder with its cast
    /// (`$3::float8`), to be written once or several times.
    pub fn bind(&mut self, p: Param) -> String {
        let cast = p.cast();
        self.params.push(p);
        format!("${}::{cast}", self.params.len())
    }

    /// Binds and appends the placeholder.
    pub fn push_param(&mut self, p: Param) -> &mut Self {
        let ph = self.bind(p);
        self.text.push_str(&ph);
        self
    }
}

/// The typed value of property `name_ph` (a bound text placeholder) of
/// class `class`, or NULL when the row's value is of another JSON type:
/// `CASE` makes sure nothing is cast that is not of its type.
pub(crate) fn typed_prop(class: crate::filter::Class, name_ph: &str) -> String {
    use crate::filter::Class;
    match class {
        Class::Str => format!(
            "(CASE WHEN jsonb_typeof(props->{name_ph}) = 'string' THEN props->>{name_ph} END)"
        ),
        Class::Num => format!(
            "(CASE WHEN jsonb_typeof(props->{name_ph}) = 'number' THEN (props->>{name_ph})::float8 END)"
        ),
        Class::Bool => format!(
            "(CASE WHEN jsonb_typeof(props->{name_ph}) = 'boolean' THEN (props->>{name_ph})::boolean END)"
        ),
    }
}

use crate::filter::{Class, Filter, Operand, Scalar, Target};

impl Operand {
    /// The operand as SQL (binding what it holds).
    fn sql(&self, sql: &mut Sql) -> String {
        match self {
            Operand::Lit(Scalar::Str(s)) => sql.bind(Param::Text(s.clone())),
            Operand::Lit(Scalar::Num(n)) => sql.bind(Param::Float(*n)),
            Operand::Lit(Scalar::Bool(b)) => sql.bind(Param::Bool(*b)),
            Operand::Prop { name, class, casei } => {
                let ph = sql.bind(Param::Text(name.clone()));
                let v = typed_prop(*class, &ph);
                if *casei {
                    format!("lower({v} COLLATE \"C\")")
                } else {
                    v
                }
            }
        }
    }

    /// As SQL, with strings compared byte by byte (the "C" collation),
    /// as the in-memory reading compares them.
    fn sql_ordered(&self, sql: &mut Sql) -> String {
        let v = self.sql(sql);
        match self.class() {
            Class::Str => format!("({v} COLLATE \"C\")"),
            _ => v,
        }
    }
}

impl Filter {
    /// Appends the filter as a SQL condition over a projected table's row.
    pub fn to_sql(&self, sql: &mut Sql) {
        let f = self.fragment(sql);
        sql.push(&f);
    }

    fn fragment(&self, sql: &mut Sql) -> String {
        match self {
            Filter::Bool(true) => "TRUE".into(),
            Filter::Bool(false) => "FALSE".into(),
            Filter::And(v) if v.is_empty() => "TRUE".into(),
            Filter::Or(v) if v.is_empty() => "FALSE".into(),
            Filter::And(v) => join(v, " AND ", sql),
            Filter::Or(v) => join(v, " OR ", sql),
            Filter::Not(f) => format!("(NOT {})", f.fragment(sql)),
            Filter::Cmp { left, op, right } => {
                let (l, r) = (left.sql_ordered(sql), right.sql_ordered(sql));
                format!("({l} {} {r})", op.sql())
            }
            Filter::Like {
                operand, pattern, ..
            } => {
                let v = operand.sql_ordered(sql);
                let p = sql.bind(Param::Text(pattern.clone()));
                format!("({v} LIKE {p})")
            }
            Filter::IsNull(Target::Prop(name)) => {
                let ph = sql.bind(Param::Text(name.clone()));
                format!("(props->{ph} IS NULL OR jsonb_typeof(props->{ph}) = 'null')")
            }
            Filter::IsNull(Target::Geometry) => "(geom IS NULL)".into(),
            Filter::Spatial { op, ewkb, .. } => {
                let g = sql.bind(Param::Geom(ewkb.clone()));
                format!("{}(geom, {g})", op.sql())
            }
            Filter::Time(r) => {
                let mut parts = Vec::new();
                if let Some((lo, inc)) = r.lo {
                    let p = sql.bind(Param::Time(lo));
                    parts.push(format!("t {} {p}", if inc { ">=" } else { ">" }));
                }
                if let Some((hi, inc)) = r.hi {
                    let p = sql.bind(Param::Time(hi));
                    parts.push(format!("t {} {p}", if inc { "<=" } else { "<" }));
                }
                if parts.is_empty() {
                    // Every instant, but a feature without one stays unknown.
                    "(t IS NOT NULL)".into()
                } else {
                    format!("({})", parts.join(" AND "))
                }
            }
            Filter::Bbox(b) => {
                let [x0, y0, x1, y1] = b.0;
                let mut f = |v: f64| sql.bind(Param::Float(v));
                let (px0, py0, px1, py1) = (f(x0), f(y0), f(x1), f(y1));
                // `&&` finds candidates through the GiST index (its boxes
                // are rounded outwards); the exact test follows on the
                // geometry's own extent, as the in-memory reading tests it.
                let lat = format!("ST_YMin(geom) <= {py1} AND ST_YMax(geom) >= {py0}");
                if x0 <= x1 {
                    format!(
                        "(geom && ST_MakeEnvelope({px0}, {py0}, {px1}, {py1}, 4326) AND {lat} AND ST_XMin(geom) <= {px1} AND ST_XMax(geom) >= {px0})"
                    )
                } else {
                    let (e, w) = (
                        sql.bind(Param::Float(180.0)),
                        sql.bind(Param::Float(-180.0)),
                    );
                    format!(
                        "((geom && ST_MakeEnvelope({px0}, {py0}, {e}, {py1}, 4326) OR geom && ST_MakeEnvelope({w}, {py0}, {px1}, {py1}, 4326)) AND {lat} AND (ST_XMax(geom) >= {px0} OR ST_XMin(geom) <= {px1}))"
                    )
                }
            }
            Filter::Terms { search, allowed } => search.sql(allowed, sql),
        }
    }
}

fn join(v: &[Filter], sep: &str, sql: &mut Sql) -> String {
    let parts: Vec<String> = v.iter().map(|f| f.fragment(sql)).collect();
    format!("({})", parts.join(sep))
}
