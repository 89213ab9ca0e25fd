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
    let mut m = Measure::new(qa);
    for (i, f) in features.iter().enumerate() {
        m.feature(i, f);
    }
    m.report()
}

/// The thresholds measured one feature at a time (a large dataset streams
/// through): memory grows with the number of thresholds, never with the
/// number of features. [`Measure::report`] gives what [`evaluate`] gives.
pub struct Measure<'a> {
    qa: &'a Qa,
    n: usize,
    invalid: usize,
    invalid_list: Vec<String>,
    outside: usize,
    outside_first: Option<String>,
    /// Per required property: features lacking it, and the first.
    missing: Vec<(usize, Option<String>)>,
    /// Per max_null_ratio entry: null values seen.
    nulls: Vec<usize>,
}

impl<'a> Measure<'a> {
    pub fn new(qa: &'a Qa) -> Self {
        Self {
            qa,
            n: 0,
            invalid: 0,
            invalid_list: Vec::new(),
            outside: 0,
            outside_first: None,
            missing: vec![(0, None); qa.required_properties.len()],
            nulls: vec![0; qa.max_null_ratio.len()],
        }
    }

    /// Measures feature number `i`.
    pub fn feature(&mut self, i: usize, f: &Feature) {
        let qa = self.qa;
        self.n += 1;
        if qa.geometry_valid
            && let Some(g) = &f.geometry
        {
            let reason = match geo::Geometry::<f64>::try_from(&g.value) {
                Ok(geom) => geom.check_validation().err().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(r) = reason {
                self.invalid += 1;
                if self.invalid_list.len() < MAX_PROBLEMS {
                    self.invalid_list.push(format!("{}: {r}", label(i, f)));
                }
            }
        }
        if let Some(b) = &qa.bbox
            && let Some(g) = &f.geometry
            && let Some([w, s, e, nn]) = geometry_bbox(&g.value)
            && (w < b.west || s < b.south || e > b.east || nn > b.north)
        {
            self.outside += 1;
            if self.outside_first.is_none() {
                self.outside_first = Some(label(i, f));
            }
        }
        for (slot, prop) in self.missing.iter_mut().zip(&qa.required_properties) {
            if is_null(f, prop.as_str()) {
                slot.0 += 1;
                if slot.1.is_none() {
                    slot.1 = Some(label(i, f));
                }
            }
        }
        for (count, (prop, _)) in self.nulls.iter_mut().zip(&qa.max_null_ratio) {
            if is_null(f, prop) {
                *count += 1;
            }
        }
    }

    /// The report over every feature measured.
    pub fn report(self) -> QaReport {
        let qa = self.qa;
        let n = self.n;
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
            checks.push(Check {
                name: "geometry_valid".into(),
                pass: self.invalid == 0,
                detail: if self.invalid == 0 {
                    "every geometry is valid (OGC simple features rules)".into()
                } else {
                    format!(
                        "{} invalid geometries: {}",
                        self.invalid,
                        self.invalid_list.join("; ")
                    )
                },
            });
        }
        if let Some(b) = &qa.bbox {
            checks.push(Check {
                name: "bbox".into(),
                pass: self.outside == 0,
                detail: match &self.outside_first {
                    None => format!(
                        "every feature within [{}, {}, {}, {}]",
                        b.west, b.south, b.east, b.north
                    ),
                    Some(f) => format!(
                        "{} features extend outside [{}, {}, {}, {}], first {f}",
                        self.outside, b.west, b.south, b.east, b.north
                    ),
                },
            });
        }
        for ((count, first), prop) in self.missing.into_iter().zip(&qa.required_properties) {
            let prop = prop.as_str();
            checks.push(Check {
                name: format!("required_properties.{prop}"),
                pass: count == 0,
                detail: match first {
                    None => format!("every feature has {prop:?}"),
                    Some(first) => format!("{count} features lack {prop:?}, first {first}"),
                },
            });
        }
        for (nulls, (prop, max)) in self.nulls.into_iter().zip(&qa.max_null_ratio) {
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
}
