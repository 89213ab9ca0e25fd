//! `sortby` and the keyset `cursor` of `next` links.
//!
//! Answers are ordered by the `sortby` keys (each ascending or descending,
//! missing values last either way) and then by the feature's position in
//! its artifact (`ord`), which is unique: a total order. A `next` link
//! carries the last row's key values and `ord`; the following page is the
//! rows after it in that order. In SQL that is a condition the indexes can
//! use (`ord > $n` for the default order), so the thousandth page costs
//! what the first costs, and no count of what came before is needed.

use std::cmp::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::eval::{compare, typed_value};
use crate::filter::{Class, Operand, Scalar};
use crate::queryables::{Kind, Queryables};
use crate::sql::{Param, Sql, typed_prop};
use crate::{QueryError, quote};

/// Keys `sortby` may name.
const MAX_KEYS: usize = 4;

/// One `sortby` key.
#[derive(Clone, Debug, PartialEq)]
pub struct SortKey {
    pub name: String,
    pub class: Class,
    pub desc: bool,
}

/// The `sortby` keys (none: the artifact's order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortKeys(pub Vec<SortKey>);

/// A row's place in the order: its key values and `ord`.
pub type Place = (Vec<Option<Scalar>>, i64);

impl SortKeys {
    /// `sortby=name,-population` (`+` or nothing: ascending).
    pub fn parse(v: &str, q: &Queryables) -> Result<SortKeys, QueryError> {
        let mut keys = Vec::new();
        for part in v.split(',') {
            let part = part.trim();
            let (desc, name) = match part.as_bytes().first() {
                Some(b'-') => (true, &part[1..]),
                Some(b'+') => (false, &part[1..]),
                _ => (false, part),
            };
            if name.is_empty() {
                return Err(QueryError::new(
                    "sortby",
                    "name the properties to sort by, each with an optional + or -: sortby=name,-population",
                ));
            }
            let class = match q.kind(name) {
                Some(Kind::String) => Class::Str,
                Some(Kind::Integer | Kind::Number) => Class::Num,
                Some(Kind::Boolean) => Class::Bool,
                Some(Kind::Mixed) => {
                    return Err(QueryError::new(
                        "sortby",
                        format!(
                            "{} holds values of several kinds and cannot be sorted by",
                            quote(name)
                        ),
                    ));
                }
                None => {
                    return Err(QueryError::new(
                        "sortby",
                        format!(
                            "unknown property {} (see this collection's /queryables)",
                            quote(name)
                        ),
                    ));
                }
            };
            if keys.iter().any(|k: &SortKey| k.name == name) {
                return Err(QueryError::new(
                    "sortby",
                    format!("{} is named twice", quote(name)),
                ));
            }
            keys.push(SortKey {
                name: name.to_owned(),
                class,
                desc,
            });
        }
        if keys.len() > MAX_KEYS {
            return Err(QueryError::new(
                "sortby",
                format!("at most {MAX_KEYS} sort keys"),
            ));
        }
        Ok(SortKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `sortby` as it is written back into links.
    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|k| format!("{}{}", if k.desc { "-" } else { "+" }, k.name))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A feature's key values.
    pub fn values(&self, props: Option<&Map<String, Value>>) -> Vec<Option<Scalar>> {
        self.0
            .iter()
            .map(|k| typed_value(props, &k.name, k.class))
            .collect()
    }

    /// The total order of two places.
    pub fn compare(&self, a: &Place, b: &Place) -> Ordering {
        for (i, k) in self.0.iter().enumerate() {
            let o = match (&a.0[i], &b.0[i]) {
                (Some(x), Some(y)) => {
                    let o = compare(x, y).unwrap_or(Ordering::Equal);
                    if k.desc { o.reverse() } else { o }
                }
                // Missing values last, whichever the direction.
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.1.cmp(&b.1)
    }

    fn key_sql(k: &SortKey, sql: &mut Sql) -> String {
        let ph = sql.bind(Param::Text(k.name.clone()));
        let v = typed_prop(k.class, &ph);
        match k.class {
            Class::Str => format!("({v} COLLATE \"C\")"),
            _ => v,
        }
    }

    /// `ORDER BY ...` (binding the key names).
    pub fn order_sql(&self, sql: &mut Sql) -> String {
        let mut parts: Vec<String> = self
            .0
            .iter()
            .map(|k| {
                let e = Self::key_sql(k, sql);
                format!("{e} {} NULLS LAST", if k.desc { "DESC" } else { "ASC" })
            })
            .collect();
        parts.push("ord ASC".into());
        format!("ORDER BY {}", parts.join(", "))
    }

    /// The condition for the rows after `c` in this order.
    pub fn after_sql(&self, c: &Cursor, sql: &mut Sql) -> String {
        let mut ors = Vec::new();
        let mut equal: Vec<String> = Vec::new();
        for (i, k) in self.0.iter().enumerate() {
            let e = Self::key_sql(k, sql);
            match &c.values[i] {
                Some(v) => {
                    let lit = Operand::Lit(v.clone());
                    let p = lit_sql(&lit, sql);
                    let cmp = if k.desc { "<" } else { ">" };
                    let mut here = equal.clone();
                    here.push(format!("({e} {cmp} {p} OR {e} IS NULL)"));
                    ors.push(format!("({})", here.join(" AND ")));
                    equal.push(format!("{e} = {p}"));
                }
                None => equal.push(format!("{e} IS NULL")),
            }
        }
        let o = sql.bind(Param::Int(c.ord));
        equal.push(format!("ord > {o}"));
        ors.push(format!("({})", equal.join(" AND ")));
        format!("({})", ors.join(" OR "))
    }
}

fn lit_sql(o: &Operand, sql: &mut Sql) -> String {
    match o {
        Operand::Lit(Scalar::Str(s)) => {
            format!("({} COLLATE \"C\")", sql.bind(Param::Text(s.clone())))
        }
        Operand::Lit(Scalar::Num(n)) => sql.bind(Param::Float(*n)),
        Operand::Lit(Scalar::Bool(b)) => sql.bind(Param::Bool(*b)),
        Operand::Prop { .. } => "NULL".into(),
    }
}

/// Where the next page starts: after this place.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub values: Vec<Option<Scalar>>,
    pub ord: i64,
}

impl Cursor {
    pub fn new(place: Place) -> Cursor {
        Cursor {
            values: place.0,
            ord: place.1,
        }
    }

    pub fn place(&self) -> Place {
        (self.values.clone(), self.ord)
    }

    /// The token written into a `next` link: base64url of a JSON array of
    /// the key values and `ord`. It says where to resume, nothing more:
    /// any token a client makes up only selects another page of what the
    /// caller may read anyway.
    pub fn encode(&self) -> String {
        let mut a: Vec<Value> = self
            .values
            .iter()
            .map(|v| match v {
                None => Value::Null,
                Some(Scalar::Str(s)) => Value::String(s.clone()),
                Some(Scalar::Num(n)) => serde_json::Number::from_f64(*n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Some(Scalar::Bool(b)) => Value::Bool(*b),
            })
            .collect();
        a.push(Value::from(self.ord));
        URL_SAFE_NO_PAD.encode(Value::Array(a).to_string())
    }

    /// Reads a token back for these keys; anything else is refused.
    pub fn decode(token: &str, keys: &SortKeys) -> Result<Cursor, QueryError> {
        let bad = || {
            QueryError::new(
                "cursor",
                "not a cursor this server gave for this sortby: follow the next link as given",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| bad())?;
        let Ok(Value::Array(mut a)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(bad());
        };
        if a.len() != keys.0.len() + 1 {
            return Err(bad());
        }
        let ord = a
            .pop()
            .and_then(|v| v.as_i64())
            .filter(|o| *o >= 0)
            .ok_or_else(bad)?;
        let mut values = Vec::with_capacity(a.len());
        for (v, k) in a.into_iter().zip(&keys.0) {
            values.push(match (v, k.class) {
                (Value::Null, _) => None,
                (Value::String(s), Class::Str) => Some(Scalar::Str(s)),
                (Value::Number(n), Class::Num) => Some(Scalar::Num(n.as_f64().ok_or_else(bad)?)),
                (Value::Bool(b), Class::Bool) => Some(Scalar::Bool(b)),
                _ => return Err(bad()),
            });
        }
        Ok(Cursor { values, ord })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queryables::Observer;
    use serde_json::json;

    #[test]
    fn sortby_orders_with_missing_values_last_and_cursors_round_trip() {
        let rows = [
            json!({"n": "b", "p": 3}),
            json!({"n": "a", "p": 1}),
            json!({"p": 2}),
            json!({"n": "a", "p": 5}),
        ];
        let mut o = Observer::new();
        for r in &rows {
            o.observe(r.as_object(), Some("Point"));
        }
        let q = o.finish();
        let keys = SortKeys::parse("n,-p", &q).unwrap();
        let mut places: Vec<Place> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (keys.values(r.as_object()), i as i64))
            .collect();
        places.sort_by(|a, b| keys.compare(a, b));
        let order: Vec<i64> = places.iter().map(|p| p.1).collect();
        assert_eq!(order, vec![3, 1, 0, 2]);
        let c = Cursor::new(places[1].clone());
        assert_eq!(Cursor::decode(&c.encode(), &keys).unwrap(), c);
        assert!(Cursor::decode(&c.encode(), &SortKeys::default()).is_err());
        assert!(Cursor::decode("not base64!", &keys).is_err());
        assert!(SortKeys::parse("nope", &q).is_err());
        assert!(SortKeys::parse("n,n", &q).is_err());
        let mut sql = Sql::new();
        let after = keys.after_sql(&c, &mut sql);
        assert!(!after.contains("'a'"), "{after}");
        assert_eq!(sql.params.len(), 5);
    }
}
