//! Waivers: the one reviewed file that may excuse a finding.
//!
//! ```yaml
//! waivers:
//!   - rule: KFM-K8S-002
//!     target: infra/k8s/base/*.yaml      # a path as the gate prints it; * and ** globs
//!     reason: one-shot migration pod, no probe to give
//!     owner: platform@kfm.example
//!     expires: 2027-03-31
//! ```
//!
//! Every field is required and nothing else is accepted. A waiver past its
//! expiry excuses nothing and is itself a finding (KFM-WVR-001); a waiver
//! that matches no finding is reported, so stale ones get removed.

use chrono::NaiveDate;
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::finding::Finding;
use crate::scan::ScanError;
use crate::yaml::{Seg, documents};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    waivers: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    rule: String,
    target: String,
    reason: String,
    owner: String,
    expires: String,
}

/// A waiver as read, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Waiver {
    pub file: String,
    pub line: u32,
    pub rule: String,
    pub target: String,
    pub reason: String,
    pub owner: String,
    pub expires: NaiveDate,
    #[serde(skip)]
    matcher: Option<GlobMatcherOrd>,
}

/// `GlobMatcher` ordered by its pattern (for a sortable [`Waiver`]).
#[derive(Debug, Clone)]
struct GlobMatcherOrd(GlobMatcher);
impl PartialEq for GlobMatcherOrd {
    fn eq(&self, o: &Self) -> bool {
        self.0.glob() == o.0.glob()
    }
}
impl Eq for GlobMatcherOrd {}
impl PartialOrd for GlobMatcherOrd {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for GlobMatcherOrd {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.glob().glob().cmp(o.0.glob().glob())
    }
}

impl Waiver {
    pub fn matches(&self, f: &Finding) -> bool {
        f.rule == self.rule && self.matcher.as_ref().is_some_and(|m| m.0.is_match(&f.file))
    }
}

/// A finding excused by a waiver.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Waived {
    pub finding: Finding,
    pub waiver: Waiver,
}

/// Reads a waiver file. Anything malformed stops the run (exit 2): a
/// waiver that cannot be read must not silently stop excusing, nor start.
pub fn load(file: &str, text: &str) -> Result<Vec<Waiver>, ScanError> {
    let bad = |line: usize, reason: String| ScanError::Waivers {
        path: file.to_owned(),
        line,
        reason,
    };
    let docs = documents(file, text)?;
    let Some(doc) = docs.first() else {
        return Ok(Vec::new());
    };
    let parsed: File = serde_yaml_ng::from_value(doc.value.clone()).map_err(|e| {
        bad(
            doc.start,
            format!("{e}; each waiver needs rule, target, reason, owner and expires (YYYY-MM-DD), and nothing else"),
        )
    })?;
    let mut out = Vec::new();
    for (i, e) in parsed.waivers.into_iter().enumerate() {
        let (line, _) = doc.line_of(&[Seg::Key("waivers"), Seg::Index(i)]);
        for (k, v) in [
            ("rule", &e.rule),
            ("target", &e.target),
            ("reason", &e.reason),
            ("owner", &e.owner),
        ] {
            if v.trim().is_empty() {
                return Err(bad(
                    line as usize,
                    format!("waiver {}: {k} is empty", i + 1),
                ));
            }
        }
        let expires = NaiveDate::parse_from_str(&e.expires, "%Y-%m-%d").map_err(|_| {
            bad(
                line as usize,
                format!(
                    "waiver {}: expires {:?} is not a date (YYYY-MM-DD)",
                    i + 1,
                    e.expires
                ),
            )
        })?;
        let glob = Glob::new(&e.target).map_err(|err| {
            bad(
                line as usize,
                format!("waiver {}: target {:?}: {err}", i + 1, e.target),
            )
        })?;
        out.push(Waiver {
            file: file.to_owned(),
            line,
            rule: e.rule,
            target: e.target,
            reason: e.reason,
            owner: e.owner,
            expires,
            matcher: Some(GlobMatcherOrd(glob.compile_matcher())),
        });
    }
    Ok(out)
}

/// Applies waivers: returns the findings still failing (with a KFM-WVR-001
/// finding per expired waiver), the waived ones, and the unused waivers.
pub fn apply(
    findings: Vec<Finding>,
    waivers: &[Waiver],
    today: NaiveDate,
    text: &str,
) -> (Vec<Finding>, Vec<Waived>, Vec<Waiver>) {
    let mut failing = Vec::new();
    let mut waived = Vec::new();
    let mut used = vec![false; waivers.len()];
    for f in findings {
        let hit = waivers
            .iter()
            .enumerate()
            .find(|(_, w)| w.expires >= today && w.matches(&f));
        match hit {
            Some((i, w)) => {
                used[i] = true;
                waived.push(Waived {
                    finding: f,
                    waiver: w.clone(),
                });
            }
            None => failing.push(f),
        }
    }
    let mut unused = Vec::new();
    for (i, w) in waivers.iter().enumerate() {
        if w.expires < today {
            failing.push(Finding {
                file: w.file.clone(),
                line: w.line,
                column: 1,
                rule: "KFM-WVR-001".into(),
                message: format!(
                    "waiver for {} on {} (owner {}) expired on {}",
                    w.rule, w.target, w.owner, w.expires
                ),
                snippet: text
                    .lines()
                    .nth(w.line as usize - 1)
                    .unwrap_or("")
                    .to_owned(),
            });
        } else if !used[i] {
            unused.push(w.clone());
        }
    }
    (failing, waived, unused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(file: &str, rule: &str) -> Finding {
        Finding {
            file: file.into(),
            line: 1,
            column: 1,
            rule: rule.into(),
            message: "m".into(),
            snippet: String::new(),
        }
    }

    const W: &str = "waivers:\n  - rule: KFM-K8S-002\n    target: infra/k8s/**/job-*.yaml\n    reason: one-shot\n    owner: platform\n    expires: 2027-01-01\n  - rule: KFM-TF-002\n    target: infra/tofu/legacy.tf\n    reason: being replaced\n    owner: data\n    expires: 2026-01-01\n  - rule: KFM-K8S-009\n    target: nothing/**\n    reason: r\n    owner: o\n    expires: 2030-01-01\n";

    #[test]
    fn waivers_excuse_expire_and_go_stale() {
        let ws = load("infra/waivers.yaml", W).unwrap();
        assert_eq!(ws.len(), 3);
        assert_eq!(ws[1].line, 7);
        let today = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let (failing, waived, unused) = apply(
            vec![
                finding("infra/k8s/base/job-migrate.yaml", "KFM-K8S-002"),
                finding("infra/k8s/base/job-migrate.yaml", "KFM-K8S-003"),
                finding("infra/tofu/legacy.tf", "KFM-TF-002"),
            ],
            &ws,
            today,
            W,
        );
        assert_eq!(waived.len(), 1);
        let rules: Vec<_> = failing.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(rules, vec!["KFM-K8S-003", "KFM-TF-002", "KFM-WVR-001"]);
        assert_eq!(failing[2].line, 7);
        assert_eq!(unused.len(), 1);
        assert_eq!(unused[0].rule, "KFM-K8S-009");
    }

    #[test]
    fn malformed_waivers_stop_the_run() {
        for (bad, why) in [
            (
                "waivers:\n  - rule: X\n    target: a\n    reason: r\n    owner: o\n",
                "missing field `expires`",
            ),
            (
                "waivers:\n  - rule: X\n    target: a\n    reason: r\n    owner: o\n    expires: 2027-13-01\n",
                "not a date",
            ),
            (
                "waivers:\n  - rule: X\n    target: a\n    reason: \"\"\n    owner: o\n    expires: 2027-01-01\n",
                "reason is empty",
            ),
            (
                "waivers:\n  - rule: X\n    target: a\n    reason: r\n    owner: o\n    expires: 2027-01-01\n    approved: yes\n",
                "unknown field",
            ),
            (
                "waivers:\n  - rule: X\n    target: \"a[\"\n    reason: r\n    owner: o\n    expires: 2027-01-01\n",
                "target",
            ),
        ] {
            let e = load("w.yaml", bad).unwrap_err().to_string();
            assert!(e.starts_with("w.yaml:"), "{e}");
            assert!(e.contains(why), "{e} should say {why}");
        }
    }
}
