//! Findings and the rule catalogue.
//!
//! Every rule has a stable id (what waivers, SARIF and CI dashboards refer
//! to) and a one-line fix hint. Ids are never reused for another meaning.

use serde::Serialize;

/// A rule of the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub title: String,
    /// One line: what to do about a finding.
    pub hint: String,
    /// The regex, for rules that are one (so other tools can be given the
    /// same pattern set, as `bench/infra-secrets.sh` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// One problem found, located.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// Path relative to the scanned directory's parent, `/`-separated.
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    pub rule: String,
    pub message: String,
    /// The offending line, with any secret on it masked.
    pub snippet: String,
}

/// A whole run's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// Files read (text files; binary files are skipped and counted).
    pub files_scanned: usize,
    pub binary_files_skipped: usize,
    pub rules: Vec<Rule>,
    /// Sorted by file, line, column, rule: two runs print the same bytes.
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}
