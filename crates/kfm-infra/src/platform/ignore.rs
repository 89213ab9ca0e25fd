//! The one reviewed file of drift a team has decided to live with, for a
//! while: `infra/platform/drift-ignore.yaml`.
//!
//! ```yaml
//! apiVersion: kfm.dev/platform/v1
//! kind: DriftIgnore
//! ignore:
//!   - resource: stream/KFM_DEADLETTER_DEV   # as the drift report names it; * globs
//!     field: max_age                        # or "*"
//!     env: dev                              # or "*"
//!     owner: platform@kfm.example
//!     reason: shortened while the dead-letter backlog is replayed
//!     expires: 2027-01-31
//! ```
//!
//! Every field is required. An entry past its expiry ignores nothing (the
//! drift is reported again) and a critical drift (a precise table opened
//! to the public) can never be ignored. Server-filled defaults do not
//! belong here: the comparison leaves out whatever git does not state.

use chrono::NaiveDate;
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use super::{API_VERSION, PlatformError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    ignore: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    resource: String,
    field: String,
    env: String,
    owner: String,
    reason: String,
    expires: String,
}

/// One entry, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Ignore {
    pub resource: String,
    pub field: String,
    pub env: String,
    pub owner: String,
    pub reason: String,
    pub expires: NaiveDate,
    /// 1-based line of the entry in the file.
    pub line: usize,
    #[serde(skip)]
    matcher: GlobMatcher,
}

impl Ignore {
    /// Whether this entry, still current on `today`, covers a drift.
    pub fn covers(&self, env: &str, resource: &str, field: &str, today: NaiveDate) -> bool {
        self.expires >= today
            && (self.env == "*" || self.env == env)
            && (self.field == "*" || self.field == field)
            && self.matcher.is_match(resource)
    }
}

/// Reads the ignore file's text, strictly.
pub fn parse(shown: &str, text: &str) -> Result<Vec<Ignore>, PlatformError> {
    let f: File = serde_yaml_ng::from_str(text).map_err(|e| {
        super::yaml_error(
            shown,
            &e,
            "; each entry needs resource, field, env, owner, reason and expires (YYYY-MM-DD)",
        )
    })?;
    if f.api_version != API_VERSION || f.kind != "DriftIgnore" {
        return Err(PlatformError::Invalid {
            path: shown.to_owned(),
            reason: format!("expected apiVersion: {API_VERSION} and kind: DriftIgnore"),
        });
    }
    let starts: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- resource:"))
        .map(|(i, _)| i + 1)
        .collect();
    let mut out = Vec::new();
    for (i, e) in f.ignore.into_iter().enumerate() {
        let line = starts.get(i).copied().unwrap_or(1);
        let bad = |reason: String| PlatformError::Parse {
            path: shown.to_owned(),
            line,
            column: 1,
            reason,
        };
        for (name, v) in [
            ("resource", &e.resource),
            ("field", &e.field),
            ("owner", &e.owner),
            ("reason", &e.reason),
        ] {
            if v.trim().is_empty() {
                return Err(bad(format!("{name} is empty")));
            }
        }
        if e.env != "*" && !super::ENVIRONMENTS.contains(&e.env.as_str()) {
            return Err(bad(format!(
                "env {:?}: use dev, stage, prod or \"*\"",
                e.env
            )));
        }
        let expires = NaiveDate::parse_from_str(&e.expires, "%Y-%m-%d").map_err(|_| {
            bad(format!(
                "expires {:?} is not a date (YYYY-MM-DD)",
                e.expires
            ))
        })?;
        let matcher = Glob::new(&e.resource)
            .map_err(|err| bad(format!("resource {:?} is not a glob: {err}", e.resource)))?
            .compile_matcher();
        out.push(Ignore {
            resource: e.resource,
            field: e.field,
            env: e.env,
            owner: e.owner,
            reason: e.reason,
            expires,
            line,
            matcher,
        });
    }
    Ok(out)
}

/// Whether a YAML text is a drift ignore file.
pub fn is_ignore_file(text: &str) -> bool {
    super::is_platform_file(text) && text.lines().any(|l| l.trim() == "kind: DriftIgnore")
}
