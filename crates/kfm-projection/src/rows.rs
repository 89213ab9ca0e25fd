//! A feature as a projected row, and the projection digest over rows.
//!
//! A row is `(ord, fid, fid_numeric, geom, props)`: the feature's position
//! in its artifact, its id (text, and whether the artifact wrote it as a
//! number), its geometry (EWKB) and its properties (JSON). The digest is
//! SHA-256 over every row in `ord` order, each encoded as
//!
//! ```text
//! ord          u64, big-endian
//! fid          u8 kind (1 text, 2 number), u32 length, UTF-8 bytes
//! geom         u8 present (0/1), then u32 length and the EWKB (little-endian, SRID 4326)
//! props        u8 present (0/1), then u32 length and the RFC 8785 (JCS) text of the object
//! ```
//!
//! so that the same digest can be computed from the canonical artifact and,
//! independently, from what the database returns (`ST_AsEWKB(geom, 'NDR')`,
//! `props::text` re-canonicalised): equal digests mean an equal table.

use geojson::Feature;
use kfm_query::{Observer, Queryables};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::geom::{self, GeomError};

/// One feature, encoded for the database and the digest.
pub struct Row {
    pub ord: i64,
    pub fid: String,
    pub fid_numeric: bool,
    pub geom: Option<Vec<u8>>,
    /// JCS text of the properties (valid JSON, so also what jsonb is given).
    pub props: Option<Vec<u8>>,
    /// The feature's time (the dataset's temporal property), microseconds
    /// since the Unix epoch: the `t` column.
    pub t: Option<i64>,
    /// The feature's search terms: the `terms` column.
    pub terms: Vec<String>,
}

/// What a layer's queries are typed by, gathered row by row while it loads
/// (and again when it is verified): its queryables and its extent.
#[derive(Default)]
pub struct LayerStats {
    observer: Observer,
    extent: Option<[f64; 4]>,
}

impl LayerStats {
    /// One feature's normalised properties and geometry.
    pub fn observe(
        &mut self,
        props: Option<&Map<String, Value>>,
        geometry: Option<&geojson::GeometryValue>,
    ) {
        self.observer
            .observe(props, geometry.map(|g| g.type_name()));
        if let Some(g) = geometry {
            kfm_pipeline::normalize::for_each_position(g, &mut |p| {
                let e = self.extent.get_or_insert([p[0], p[1], p[0], p[1]]);
                e[0] = e[0].min(p[0]);
                e[1] = e[1].min(p[1]);
                e[2] = e[2].max(p[0]);
                e[3] = e[3].max(p[1]);
            });
        }
    }

    pub fn finish(self) -> (Queryables, Option<[f64; 4]>) {
        (self.observer.finish(), self.extent)
    }
}

/// The columns derived from a feature's normalised properties: its time
/// and its search terms.
pub fn derived(
    props: Option<&Map<String, Value>>,
    temporal: Option<&str>,
) -> (Option<i64>, Vec<String>) {
    let t = temporal
        .and_then(|name| props?.get(name)?.as_str())
        .and_then(kfm_query::time::instant);
    (t, kfm_query::terms::terms(props))
}

/// Why a feature cannot become a row.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("feature {ord}: it has no id (every published feature has one)")]
    NoId { ord: usize },
    #[error("feature {ord}: {source}")]
    Geometry {
        ord: usize,
        #[source]
        source: GeomError,
    },
    #[error("feature {ord}: its properties cannot be canonicalised: {message}")]
    Properties { ord: usize, message: String },
}

impl Row {
    /// The row of the feature at `ord` (its time read from the property
    /// `temporal`), counted into `stats` when given.
    pub fn of(
        ord: usize,
        f: &Feature,
        temporal: Option<&str>,
        stats: Option<&mut LayerStats>,
    ) -> Result<Row, RowError> {
        let (fid, fid_numeric) = match &f.id {
            Some(geojson::feature::Id::String(s)) => (s.clone(), false),
            Some(geojson::feature::Id::Number(n)) => (n.to_string(), true),
            None => return Err(RowError::NoId { ord }),
        };
        let geom = match &f.geometry {
            Some(g) => {
                Some(geom::ewkb(&g.value).map_err(|source| RowError::Geometry { ord, source })?)
            }
            None => None,
        };
        let props = match &f.properties {
            Some(p) => {
                Some(
                    serde_json_canonicalizer::to_vec(p).map_err(|e| RowError::Properties {
                        ord,
                        message: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let mut norm = f.properties.clone();
        if let Some(m) = norm.as_mut() {
            kfm_query::normal::object(m);
        }
        let (t, terms) = derived(norm.as_ref(), temporal);
        if let Some(stats) = stats {
            stats.observe(norm.as_ref(), f.geometry.as_ref().map(|g| &g.value));
        }
        Ok(Row {
            ord: ord as i64,
            fid,
            fid_numeric,
            geom,
            props,
            t,
            terms,
        })
    }
}

/// The running projection digest.
pub struct Digester {
    h: Sha256,
    rows: u64,
}

impl Default for Digester {
    fn default() -> Self {
        Self::new()
    }
}

impl Digester {
    pub fn new() -> Self {
        Self {
            h: Sha256::new(),
            rows: 0,
        }
    }

    fn part(&mut self, b: &[u8]) {
        self.h.update((b.len() as u32).to_be_bytes());
        self.h.update(b);
    }

    fn optional(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.h.update([1u8]);
                self.part(b);
            }
            None => self.h.update([0u8]),
        }
    }

    /// Adds one row; rows must come in `ord` order.
    pub fn push(
        &mut self,
        ord: i64,
        fid: &str,
        fid_numeric: bool,
        geom: Option<&[u8]>,
        props_jcs: Option<&[u8]>,
    ) {
        self.h.update((ord as u64).to_be_bytes());
        self.h.update([if fid_numeric { 2u8 } else { 1u8 }]);
        self.part(fid.as_bytes());
        self.optional(geom);
        self.optional(props_jcs);
        self.rows += 1;
    }

    pub fn push_row(&mut self, r: &Row) {
        self.push(
            r.ord,
            &r.fid,
            r.fid_numeric,
            r.geom.as_deref(),
            r.props.as_deref(),
        );
    }

    /// `sha256:<hex>` and the number of rows.
    pub fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.h.finalize())),
            self.rows,
        )
    }
}

/// The JCS text of a JSON document the database returned (`props::text`).
pub fn canonical_props(text: &str) -> Result<Vec<u8>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    serde_json_canonicalizer::to_vec(&v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(s: &str) -> Feature {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn the_digest_sees_every_field_and_the_order() {
        let a = feature(
            r#"{"type":"Feature","id":1,"geometry":{"type":"Point","coordinates":[1,2]},"properties":{"b":1,"a":"x"}}"#,
        );
        let b = feature(
            r#"{"type":"Feature","id":"1","geometry":{"type":"Point","coordinates":[1,2]},"properties":{"a":"x","b":1}}"#,
        );
        let digest = |fs: &[&Feature]| {
            let mut d = Digester::new();
            for (i, f) in fs.iter().enumerate() {
                d.push_row(&Row::of(i, f, None, None).unwrap());
            }
            d.finish()
        };
        // A numeric id and a text id differ; key order does not (JCS).
        assert_ne!(digest(&[&a]), digest(&[&b]));
        let a2 = feature(
            r#"{"type":"Feature","id":1,"geometry":{"type":"Point","coordinates":[1,2]},"properties":{"a":"x","b":1.0}}"#,
        );
        assert_eq!(digest(&[&a]), digest(&[&a2]));
        assert_ne!(digest(&[&a, &b]), digest(&[&b, &a]));
        // What jsonb prints back canonicalises to what was sent.
        let r = Row::of(0, &a, None, None).unwrap();
        assert_eq!(
            canonical_props(r#"{"a": "x", "b": 1}"#).unwrap(),
            r.props.unwrap()
        );
    }
}
