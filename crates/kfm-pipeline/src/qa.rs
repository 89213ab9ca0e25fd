//! Gate E: the spec's QA thresholds, measured on the normalised features.

use geo::Validation;
use geojson::{Feature, JsonValue};
use kfm_core::spec::Qa;
use serde::Serialize;

use crate::normalize::{MAX_PROBLEMS, geometry_bbox, id_string};

/// One threshold and what was measured against it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

/// The QA report stored with the run (`qa.json`).
#[derive(Debug, Clone, Serialize)]
pub struct QaReport {
    pub feature_count: usize,
    pub checks: Vec<Check>,
    /// Thresholds that could not be evaluated, and why.
    pub cannot_evaluate: Vec<String>,
}

impl QaReport {
    pub fn passed(&self) -> bool {
        self.cannot_evaluate.is_empty() && self.checks.iter().all(|c| c.pass)
    }
}

fn is_null(f: &Feature, prop: &str) -> bool {
    f.properties
        .as_ref()
        .and_then(|p| p.get(prop))
        .is_none_or(JsonValue::is_null)
}

fn label(i: usize, f: &Feature) -> String {
    match &f.id {
        Some(id) => format!("feature {i} (id {})", id_string(id)),
        None => format!("feature {i}"),
    }
}

/// Evaluates every threshold of `qa` (all of them, so the report is whole).
pub fn evaluate(qa: &Qa, features: &[Feature]) -> QaReport {
    let n = features.len();
    let mut checks = Vec::new();
    let mut cannot = Vec::new();

    if let Some(min) = qa.min_features {
        checks.push(Check {
            name: "min_features".into(),
            pass: n as u64 >= min,
            detail: format!("{n} features, at least {min} required"),
        });
    }

    if qa.geometry_valid {
        let mut bad = Vec::new();
        let mut count = 0usize;
        for (i, f) in features.iter().enumerate() {
            let Some(g) = &f.geometry else { continue };
            let reason = match geo::Geometry::<f64>::try_from(&g.value) {
                Ok(geom) => geom.check_validation().err().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(r) = reason {
                count += 1;
                if bad.len() < MAX_PROBLEMS {
                    bad.push(format!("{}: {r}", label(i, f)));
                }
            }
        }
        checks.push(Check {
            name: "geometry_valid".into(),
            pass: count == 0,
            detail: if count == 0 {
                "every geometry is valid (OGC simple features rules)".into()
            } else {
                format!("{count} invalid geometries: {}", bad.join("; "))
            },
        });
    }

    if let Some(b) = &qa.bbox {
        let mut outside = 0usize;
        let mut first = None;
        for (i, f) in features.iter().enumerate() {
            let Some(g) = &f.geometry else { continue };
            if let Some([w, s, e, nn]) = geometry_bbox(&g.value)
                && (w < b.west || s < b.south || e > b.east || nn > b.north)
            {
                outside += 1;
                first.get_or_insert_with(|| label(i, f));
            }
        }
        checks.push(Check {
            name: "bbox".into(),
            pass: outside == 0,
            detail: match first {
                None => format!(
                    "every feature within [{}, {}, {}, {}]",
                    b.west, b.south, b.east, b.north
                ),
                Some(f) => format!(
                    "{outside} features extend outside [{}, {}, {}, {}], first {f}",
                    b.west, b.south, b.east, b.north
                ),
            },
        });
    }

    for prop in &qa.required_properties {
        let prop = prop.as_str();
        let missing: Vec<usize> = features
            .iter()
            .enumerate()
            .filter(|(_, f)| is_null(f, prop))
            .map(|(i, _)| i)
            .collect();
        checks.push(Check {
            name: format!("required_properties.{prop}"),
            pass: missing.is_empty(),
            detail: match missing.first() {
                None => format!("every feature has {prop:?}"),
                Some(&i) => format!(
                    "{} features lack {prop:?}, first {}",
                    missing.len(),
                    label(i, &features[i])
                ),
            },
        });
    }

    for (prop, max) in &qa.max_null_ratio {
        if !(0.0..=1.0).contains(max) {
            cannot.push(format!(
                "max_null_ratio.{prop} is {max}: a ratio must be between 0 and 1"
            ));
            continue;
        }
        if n == 0 {
            cannot.push(format!(
                "max_null_ratio.{prop}: the null ratio is undefined over 0 features"
            ));
            continue;
        }
        let nulls = features.iter().filter(|f| is_null(f, prop)).count();
        let ratio = nulls as f64 / n as f64;
        checks.push(Check {
            name: format!("max_null_ratio.{prop}"),
            pass: ratio <= *max,
            detail: format!("{nulls}/{n} null ({ratio:.4}), at most {max} allowed"),
        });
    }

    QaReport {
        feature_count: n,
        checks,
        cannot_evaluate: cannot,
    }
}
