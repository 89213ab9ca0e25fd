//! What a collection can be queried by: its properties and the kind of
//! value each holds, observed from the features themselves.
//!
//! The projector observes a layer while loading it and stores the result
//! beside the table; the in-memory backend observes the same features when
//! it builds a view. Both walk the same normalised properties in the same
//! order with this code, so both backends type a filter the same way.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The kind of value a property holds across a layer (nulls aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    /// Values of several kinds, arrays or objects, or only nulls: such a
    /// property can be tested with `IS NULL` (and searched), not compared.
    Mixed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Mixed => "mixed",
        }
    }
}

/// A layer's queryables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Queryables {
    /// Every property name with its kind, in the order first seen.
    pub properties: Vec<(String, Kind)>,
    /// The GeoJSON geometry types the layer holds, sorted.
    pub geometry_types: Vec<String>,
}

impl Queryables {
    /// The kind of `name`, if the layer has such a property.
    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| *k)
    }

    /// Without the properties a policy obligation removes from answers:
    /// what cannot be seen cannot be queried either (a filter on a redacted
    /// field would reveal it one bit at a time).
    pub fn without(&self, redacted: &[String]) -> Queryables {
        Queryables {
            properties: self
                .properties
                .iter()
                .filter(|(n, _)| !redacted.iter().any(|r| r == n))
                .cloned()
                .collect(),
            geometry_types: self.geometry_types.clone(),
        }
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.properties.iter().map(|(n, _)| n.as_str())
    }

    /// The JSON Schema OGC API – Features Part 3 serves at
    /// `/collections/{id}/queryables`.
    pub fn json_schema(&self, id_url: &str, title: &str, temporal: Option<&str>) -> Value {
        let mut props = Map::new();
        let geometry_format = match self.geometry_types.as_slice() {
            [one] => format!("geometry-{}", one.to_ascii_lowercase()),
            _ => "geometry-any".to_owned(),
        };
        props.insert(
            "geometry".into(),
            json!({"title": "the feature's geometry, as served to you", "format": geometry_format, "x-ogc-role": "primary-geometry"}),
        );
        for (name, kind) in &self.properties {
            let mut p = match kind {
                Kind::Mixed => {
                    json!({"description": "values of several kinds: usable with IS NULL and in q= searches, not in comparisons"})
                }
                k => json!({"type": k.as_str()}),
            };
            if temporal == Some(name.as_str()) {
                p["format"] = json!("date-time");
                p["x-ogc-role"] = json!("primary-instant");
                p["description"] = json!(
                    "the feature's time (RFC 3339 date or date-time): what datetime= and the T_ functions filter on"
                );
            }
            props.insert(name.clone(), p);
        }
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": id_url,
            "type": "object",
            "title": title,
            "properties": props,
            "additionalProperties": false,
        })
    }
}

/// What has been seen of one property.
#[derive(Default, Clone, Copy)]
struct Seen {
    string: bool,
    integer: bool,
    float: bool,
    boolean: bool,
    other: bool,
}

impl Seen {
    fn kind(self) -> Kind {
        let classes = [self.string, self.integer || self.float, self.boolean]
            .iter()
            .filter(|b| **b)
            .count();
        match () {
            _ if self.other || classes != 1 => Kind::Mixed,
            _ if self.string => Kind::String,
            _ if self.boolean => Kind::Boolean,
            _ if self.float => Kind::Number,
            _ => Kind::Integer,
        }
    }
}

/// Builds [`Queryables`] feature by feature (a layer streams through it).
#[derive(Default)]
pub struct Observer {
    order: Vec<String>,
    seen: HashMap<String, Seen>,
    geometry_types: BTreeSet<String>,
}

impl Observer {
    pub fn new() -> Self {
        Self::default()
    }

    /// One feature: its (normalised) properties and its geometry's type.
    pub fn observe(&mut self, props: Option<&Map<String, Value>>, geometry_type: Option<&str>) {
        if let Some(t) = geometry_type
            && !self.geometry_types.contains(t)
        {
            self.geometry_types.insert(t.to_owned());
        }
        for (k, v) in props.into_iter().flatten() {
            let s = match self.seen.get_mut(k) {
                Some(s) => s,
                None => {
                    self.order.push(k.clone());
                    self.seen.entry(k.clone()).or_default()
                }
            };
            match v {
                Value::Null => {}
                Value::String(_) => s.string = true,
                Value::Bool(_) => s.boolean = true,
                Value::Number(n) if n.is_f64() => s.float = true,
                Value::Number(_) => s.integer = true,
                Value::Array(_) | Value::Object(_) => s.other = true,
            }
        }
    }

    pub fn finish(self) -> Queryables {
        let seen = self.seen;
        Queryables {
            properties: self
                .order
                .into_iter()
                .map(|n| {
                    let k = seen.get(&n).copied().unwrap_or_default().kind();
                    (n, k)
                })
                .collect(),
            geometry_types: self.geometry_types.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn kinds_come_from_the_values_and_order_from_first_sight() {
        let mut o = Observer::new();
        o.observe(
            Some(&props(json!({"b": "x", "a": 1, "c": true, "d": null}))),
            Some("Point"),
        );
        o.observe(
            Some(&props(json!({"a": 2.5, "e": [1], "b": "y", "f": 1}))),
            Some("Point"),
        );
        o.observe(Some(&props(json!({"f": "one"}))), Some("Polygon"));
        let q = o.finish();
        let got: Vec<(&str, Kind)> = q.properties.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_eq!(
            got,
            vec![
                ("b", Kind::String),
                ("a", Kind::Number),
                ("c", Kind::Boolean),
                ("d", Kind::Mixed),
                ("e", Kind::Mixed),
                ("f", Kind::Mixed),
            ]
        );
        assert_eq!(q.geometry_types, vec!["Point", "Polygon"]);
        assert_eq!(q.without(&["a".into()]).kind("a"), None);
        let schema = q.json_schema("http://x/q", "t", Some("b"));
        assert_eq!(schema["properties"]["b"]["format"], "date-time");
        assert_eq!(schema["properties"]["geometry"]["format"], "geometry-any");
        assert_eq!(schema["properties"]["a"]["type"], "number");
    }
}
