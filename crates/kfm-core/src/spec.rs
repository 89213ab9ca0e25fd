//! Dataset specs (`datasets/<id>.yaml`): what a dataset is, where it
//! comes from, under which license, how sensitive it is, and the QA it must
//! pass.
//!
//! Parsing is strict. Unknown keys are errors (a typo such as `licence:` must
//! never silently drop a rule), and every error names the file, line and
//! column and says what was expected, because specs are written by hand and
//! reviewed in git.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::ids::DatasetId;
use crate::label::PolicyLabel;
use crate::license::LicenseId;

/// A parsed, validated dataset spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub id: DatasetId,
    pub title: Text,
    pub description: Text,
    pub publisher: Publisher,
    pub contact: Contact,
    #[serde(default)]
    pub keywords: Vec<Text>,
    #[serde(default)]
    pub spatial_extent: Option<SpatialExtent>,
    #[serde(default)]
    pub temporal_extent: Option<TemporalExtent>,
    pub source: Source,
    pub license: License,
    pub sensitivity: Sensitivity,
    #[serde(default)]
    pub qa: Qa,
}

/// A non-empty (after trimming) piece of human text.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Text(String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Text {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.trim().is_empty() {
            Err("expected non-empty text")
        } else {
            Ok(Self(s))
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        t.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    pub name: Text,
    #[serde(default)]
    pub url: Option<Text>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: Text,
    pub email: Email,
}

/// An e-mail address, checked only for shape (`local@domain.tld`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }) && !s.chars().any(char::is_whitespace);
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "expected an e-mail address such as data@example.org, got {s:?}"
            ))
        }
    }
}

impl From<Email> for String {
    fn from(e: Email) -> Self {
        e.0
    }
}

/// `[west, south, east, north]` in WGS 84 degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(into = "Vec<f64>")]
pub struct Bbox {
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
}

impl TryFrom<Vec<f64>> for Bbox {
    type Error = String;
    fn try_from(v: Vec<f64>) -> Result<Self, Self::Error> {
        let [west, south, east, north] = v[..] else {
            return Err(format!(
                "expected [west, south, east, north] (4 numbers), got {} numbers",
                v.len()
            ));
        };
        let lon = -180.0..=180.0;
        let lat = -90.0..=90.0;
        if !lon.contains(&west) || !lon.contains(&east) {
            return Err(format!(
                "bbox longitudes must lie in [-180, 180], got west={west} east={east}"
            ));
        }
        if !lat.contains(&south) || !lat.contains(&north) {
            return Err(format!(
                "bbox latitudes must lie in [-90, 90], got south={south} north={north}"
            ));
        }
        if south > north {
            return Err(format!(
                "bbox south ({south}) must not exceed north ({north})"
            ));
        }
        Ok(Self {
            west,
            south,
            east,
            north,
        })
    }
}

impl<'de> Deserialize<'de> for Bbox {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bbox;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[west, south, east, north]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bbox, A::Error> {
                let mut v = Vec::with_capacity(4);
                while let Some(x) = seq.next_element::<f64>()? {
                    v.push(x);
                }
                Bbox::try_from(v).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_seq(V)
    }
}

impl From<Bbox> for Vec<f64> {
    fn from(b: Bbox) -> Self {
        vec![b.west, b.south, b.east, b.north]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpatialExtent {
    pub bbox: Bbox,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalExtent {
    pub start: NaiveDate,
    #[serde(default)]
    pub end: Option<NaiveDate>,
    /// The feature property that holds each feature's date or date-time
    /// (RFC 3339): what the API's `datetime=` and CQL2's temporal
    /// functions filter on. Without it, features have no time of their own.
    #[serde(default)]
    pub property: Option<String>,
}

/// The format of a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Delimited text with a latitude and a longitude column.
    Csv,
    /// RFC 7946 GeoJSON.
    Geojson,
}

impl SourceFormat {
    /// The file extension used for the stored raw object.
    pub fn extension(self) -> &'static str {
        match self {
            SourceFormat::Csv => "csv",
            SourceFormat::Geojson => "geojson",
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            SourceFormat::Csv => "text/csv",
            SourceFormat::Geojson => "application/geo+json",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A path (relative to the spec file's directory, or absolute) or a
    /// `file://` URI.
    pub uri: Text,
    pub format: SourceFormat,
    /// CSV only: the column holding latitude in decimal degrees.
    #[serde(default)]
    pub lat_column: Option<Text>,
    /// CSV only: the column holding longitude in decimal degrees.
    #[serde(default)]
    pub lon_column: Option<Text>,
}

/// Where a source can be read from, once resolved against the spec's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLocation {
    File(PathBuf),
    /// A scheme KFM cannot fetch yet (http, s3, …).
    Unsupported {
        scheme: String,
    },
}

impl Source {
    /// Resolves `uri` against the directory holding the spec (pure path
    /// arithmetic, no I/O).
    pub fn resolve(&self, spec_dir: &Path) -> SourceLocation {
        let uri = self.uri.as_str();
        if let Some(path) = uri.strip_prefix("file://") {
            return SourceLocation::File(spec_dir.join(path));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return SourceLocation::Unsupported {
                scheme: scheme.to_owned(),
            };
        }
        SourceLocation::File(spec_dir.join(uri))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// KFM keeps and serves a copy of the data.
    #[default]
    Mirror,
    /// Only the catalog record is published; the data is not redistributed.
    MetadataOnly,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    /// SPDX license id.
    pub spdx: LicenseId,
    pub rights_holder: Text,
    #[serde(default)]
    pub attribution: Option<Text>,
    #[serde(default)]
    pub distribution: Distribution,
    /// Free-text note for reviewers (for example why a LicenseRef is used).
    #[serde(default)]
    pub note: Option<Text>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneralizationMethod {
    /// Snap coordinates to a grid of `degrees`.
    Grid,
    /// Replace coordinates by the centre of their H3 cell at `resolution`.
    H3,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generalization {
    pub method: GeneralizationMethod,
    #[serde(default)]
    pub degrees: Option<f64>,
    #[serde(default)]
    pub resolution: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensitivity {
    pub policy_label: PolicyLabel,
    #[serde(default)]
    pub generalization: Option<Generalization>,
    #[serde(default)]
    pub embargo_until: Option<NaiveDate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qa {
    #[serde(default)]
    pub min_features: Option<u64>,
    #[serde(default = "yes")]
    pub geometry_valid: bool,
    #[serde(default)]
    pub bbox: Option<Bbox>,
    #[serde(default)]
    pub required_properties: Vec<Text>,
    /// Per property, the largest tolerated share (0–1) of features where it
    /// is missing or null.
    #[serde(default)]
    pub max_null_ratio: BTreeMap<String, f64>,
}

fn yes() -> bool {
    true
}

impl Default for Qa {
    fn default() -> Self {
        Self {
            min_features: None,
            geometry_valid: true,
            bbox: None,
            required_properties: Vec::new(),
            max_null_ratio: BTreeMap::new(),
        }
    }
}

/// A spec that could not be accepted, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl DatasetSpec {
    /// Parses and validates a spec. `file` is only used to name the file in
    /// errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, SpecError> {
        let spec: DatasetSpec = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            SpecError {
                file: file.to_owned(),
                line,
                column,
                message: strip_location(&e.to_string()),
            }
        })?;
        if let Some((path, message)) = spec.cross_check() {
            let (line, column) = locate(text, &path);
            return Err(SpecError {
                file: file.to_owned(),
                line,
                column,
                message,
            });
        }
        Ok(spec)
    }

    /// Rules that involve more than one field. Returns the key path to blame
    /// and the message.
    fn cross_check(&self) -> Option<(Vec<&'static str>, String)> {
        let s = &self.source;
        match s.format {
            SourceFormat::Csv => {
                if s.lat_column.is_none() || s.lon_column.is_none() {
                    return Some((
                        vec!["source", "format"],
                        "source.format is csv: set source.lat_column and source.lon_column to the names of the latitude and longitude columns".into(),
                    ));
                }
            }
            SourceFormat::Geojson => {
                if s.lat_column.is_some() || s.lon_column.is_some() {
                    let key = if s.lat_column.is_some() {
                        "lat_column"
                    } else {
                        "lon_column"
                    };
                    return Some((
                        vec!["source", key],
                        format!(
                            "source.{key} applies only to csv sources; remove it for a geojson source"
                        ),
                    ));
                }
            }
        }

        let l = &self.license;
        if l.spdx.requires_attribution() && l.attribution.is_none() {
            return Some((
                vec!["license", "spdx"],
                format!(
                    "license {} requires attribution: add license.attribution with the text users must show",
                    l.spdx
                ),
            ));
        }

        let sens = &self.sensitivity;
        match (&sens.generalization, sens.policy_label) {
            (None, PolicyLabel::RestrictedSensitiveLocation | PolicyLabel::PublicGeneralized) => {
                return Some((
                    vec!["sensitivity", "policy_label"],
                    format!(
                        "policy_label {} requires sensitivity.generalization (method: grid with degrees, or method: h3 with resolution)",
                        sens.policy_label
                    ),
                ));
            }
            (Some(g), _) => {
                if let Some(msg) = g.check() {
                    return Some((vec!["sensitivity", "generalization"], msg));
                }
            }
            (None, _) => {}
        }
        match (sens.policy_label, sens.embargo_until) {
            (PolicyLabel::Embargoed, None) => {
                return Some((
                    vec!["sensitivity", "policy_label"],
                    "policy_label embargoed requires sensitivity.embargo_until (a date, YYYY-MM-DD)".into(),
                ));
            }
            (label, Some(_)) if label != PolicyLabel::Embargoed => {
                return Some((
                    vec!["sensitivity", "embargo_until"],
                    format!(
                        "sensitivity.embargo_until is set but policy_label is {label}: use policy_label embargoed, or remove the date"
                    ),
                ));
            }
            _ => {}
        }

        if let Some(t) = &self.temporal_extent
            && let Some(p) = &t.property
            && p.trim().is_empty()
        {
            return Some((
                vec!["temporal_extent", "property"],
                "temporal_extent.property is empty: name the feature property that holds each feature's date (2024-05-01) or date-time, or remove the key".into(),
            ));
        }

        if let Some(t) = &self.temporal_extent
            && let Some(end) = t.end
            && end < t.start
        {
            return Some((
                vec!["temporal_extent", "end"],
                format!(
                    "temporal_extent.end ({end}) is before temporal_extent.start ({})",
                    t.start
                ),
            ));
        }

        for (prop, ratio) in &self.qa.max_null_ratio {
            if !(0.0..=1.0).contains(ratio) {
                return Some((
                    vec!["qa", "max_null_ratio"],
                    format!("qa.max_null_ratio.{prop} must be between 0 and 1, got {ratio}"),
                ));
            }
        }
        None
    }
}

impl Generalization {
    fn check(&self) -> Option<String> {
        match self.method {
            GeneralizationMethod::Grid => match (self.degrees, self.resolution) {
                (_, Some(_)) => {
                    Some("generalization method grid takes degrees, not resolution".into())
                }
                (Some(d), None) if d > 0.0 && d <= 10.0 => None,
                (Some(d), None) => Some(format!(
                    "generalization degrees must be in (0, 10], got {d}"
                )),
                (None, None) => {
                    Some("generalization method grid requires degrees (for example 0.1)".into())
                }
            },
            GeneralizationMethod::H3 => match (self.resolution, self.degrees) {
                (_, Some(_)) => {
                    Some("generalization method h3 takes resolution, not degrees".into())
                }
                (Some(r), None) if r <= 15 => None,
                (Some(r), None) => Some(format!("generalization resolution must be 0-15, got {r}")),
                (None, None) => Some("generalization method h3 requires resolution (0-15)".into()),
            },
        }
    }
}

/// serde_yaml_ng embeds " at line L column C" in its messages; we print the
/// location in front, compiler style, so drop every such phrase.
fn strip_location(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let n1 = digits(tail);
        let after = &tail[n1..];
        match after.strip_prefix(" column ") {
            Some(col) if n1 > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds the line and column of a block-style key path (`["license",
/// "spdx"]`) in YAML text, to locate errors found after deserialisation.
/// Falls back to the deepest ancestor found, then to 1:1.
fn locate(text: &str, path: &[&str]) -> (usize, usize) {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    let mut best = (1, 1, 0usize);
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        while stack.last().is_some_and(|&(ind, _)| ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        let depth = stack.len();
        if depth <= path.len()
            && stack.iter().zip(path).all(|(&(_, k), p)| k == *p)
            && depth > best.2
        {
            best = (i + 1, indent + 1, depth);
            if depth == path.len() {
                break;
            }
        }
    }
    (best.0, best.1)
}

deserialize_via_try_from_string!(Text, "non-empty text");

deserialize_via_try_from_string!(Email, "an e-mail address");
