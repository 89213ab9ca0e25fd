//! The policy test runner behind `kfm policy test`.
//!
//! Two kinds of case, both run against the bundle exactly as the runtime
//! loads it:
//! - Rego tests: every rule named `test_*` must evaluate to `true`;
//! - YAML fixtures (`tests/**/*.yaml`): an input and the decision expected
//!   of the entry point, evaluated through [`DecisionPoint::evaluate`], the
//!   very call the runtime makes. Parity is by construction, and a test
//!   (`tests/parity.rs`) checks it from the outside.

use std::time::{Duration, Instant};

use kfm_core::Digest;
use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleError};
use crate::decision::{Decision, DecisionPoint, Options, build_engine, rules_of};

/// One fixture file: `cases: [{name, input, expect}]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    pub cases: Vec<Fixture>,
}

/// One fixture: an input and the decision expected for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    pub input: serde_json::Value,
    pub expect: Expectation,
}

/// The expected decision. `obligations` defaults to none, and then none
/// may be produced: an unexpected obligation is a failure too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub allow: bool,
    pub reason: String,
    #[serde(default)]
    pub obligations: Vec<serde_json::Value>,
}

/// Which kind of case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    Rego,
    Fixture,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// `data.<pkg>.test_x` for Rego tests, `<file>: <name>` for fixtures.
    pub name: String,
    pub kind: CaseKind,
    pub file: String,
    pub line: Option<u32>,
    pub passed: bool,
    /// What went wrong, when it did.
    pub message: Option<String>,
    pub duration_us: u64,
    /// The decision the entry point gave (fixtures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// Line coverage of one Rego file.
#[derive(Debug, Clone, Serialize)]
pub struct FileCoverage {
    pub file: String,
    pub covered: Vec<u32>,
    pub not_covered: Vec<u32>,
    pub percent: f64,
}

/// Everything `kfm policy test` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub bundle_digest: Digest,
    pub revision: String,
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<CaseResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Vec<FileCoverage>>,
}

impl TestReport {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// JUnit XML, one suite per kind.
    pub fn to_junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut report = Report::new("kfm policy test");
        for (kind, suite_name) in [
            (CaseKind::Rego, "rego tests"),
            (CaseKind::Fixture, "fixtures"),
        ] {
            let mut suite = TestSuite::new(suite_name);
            for c in self.cases.iter().filter(|c| c.kind == kind) {
                let status = if c.passed {
                    TestCaseStatus::success()
                } else {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    if let Some(m) = &c.message {
                        s.set_message(m.as_str());
                    }
                    s
                };
                let mut case = TestCase::new(c.name.as_str(), status);
                case.set_classname(c.file.as_str());
                case.set_time(Duration::from_micros(c.duration_us));
                suite.add_test_case(case);
            }
            report.add_test_suite(suite);
        }
        report.to_string().unwrap_or_default()
    }
}

/// Why the runner could not run at all (as opposed to a failing case).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {reason}")]
    Fixture { path: String, reason: String },
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Only cases whose name matches.
    pub run: Option<regex::Regex>,
    /// Collect line coverage of the Rego files.
    pub coverage: bool,
    pub decision: Options,
}

/// Reads every fixture file of the bundle (`*.yaml`/`*.yml` under a
/// `tests` directory, data files excepted).
pub fn fixtures(bundle: &Bundle) -> Result<Vec<(String, Fixture)>, RunnerError> {
    let mut out = Vec::new();
    for (rel, bytes) in bundle.files() {
        let in_tests = rel.starts_with("tests/") || rel.contains("/tests/");
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if !in_tests || !yaml || name.starts_with("data.") {
            continue;
        }
        let path = bundle.path_of(rel).display().to_string();
        let file: FixtureFile =
            serde_yaml_ng::from_slice(bytes).map_err(|e| RunnerError::Fixture {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        for f in file.cases {
            out.push((rel.clone(), f));
        }
    }
    Ok(out)
}

/// Runs the bundle's tests.
pub fn run(bundle: &Bundle, options: &TestOptions) -> Result<TestReport, RunnerError> {
    let point = DecisionPoint::new(bundle, options.decision.clone())?;
    let fixtures = fixtures(bundle)?;
    let selected = |name: &str| options.run.as_ref().is_none_or(|r| r.is_match(name));
    let mut engine = build_engine(bundle)?;
    let tests: Vec<_> = rules_of(&mut engine)
        .into_iter()
        .filter(|r| !r.is_function && r.name.starts_with("test_"))
        .collect();
    let mut cases = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in &tests {
        let path = format!("data.{}.{}", t.package, t.name);
        if !selected(&path) || !seen.insert(path.clone()) {
            continue;
        }
        let mut e = engine.clone();
        e.set_input(regorus::Value::new_object());
        let start = Instant::now();
        let result = e.eval_rule(path.clone());
        let (passed, message) = match result {
            Ok(regorus::Value::Bool(true)) => (true, None),
            Ok(regorus::Value::Undefined) => (
                false,
                Some("undefined: a condition in the test body did not hold".to_owned()),
            ),
            Ok(v) => (false, Some(format!("evaluated to {v}, not true"))),
            Err(err) => (false, Some(format!("error: {err}"))),
        };
        cases.push(CaseResult {
            name: path,
            kind: CaseKind::Rego,
            file: t.file.clone(),
            line: Some(t.line),
            passed,
            message,
            duration_us: start.elapsed().as_micros() as u64,
            decision: None,
        });
    }
    for (file, f) in &fixtures {
        let name = format!("{file}: {}", f.name);
        if !selected(&name) {
            continue;
        }
        let start = Instant::now();
        let eval = point.evaluate(&f.input);
        let duration_us = start.elapsed().as_micros() as u64;
        let message = compare(&f.expect, &eval.decision, eval.detail.as_deref());
        cases.push(CaseResult {
            name,
            kind: CaseKind::Fixture,
            file: file.clone(),
            line: None,
            passed: message.is_none(),
            message,
            duration_us,
            decision: Some(eval.decision),
        });
    }
    let coverage = if options.coverage {
        Some(coverage(bundle, &point, &tests, &fixtures)?)
    } else {
        None
    };
    let failed = cases.iter().filter(|c| !c.passed).count();
    Ok(TestReport {
        bundle_digest: *bundle.digest(),
        revision: bundle.revision().to_owned(),
        passed: cases.len() - failed,
        failed,
        cases,
        coverage,
    })
}

/// `None` when `actual` is what `expect` says; else what differs.
pub fn compare(expect: &Expectation, actual: &Decision, detail: Option<&str>) -> Option<String> {
    let mut diffs = Vec::new();
    if expect.allow != actual.allow {
        diffs.push(format!(
            "allow: expected {}, got {}",
            expect.allow, actual.allow
        ));
    }
    if expect.reason != actual.reason {
        diffs.push(format!(
            "reason: expected `{}`, got `{}`",
            expect.reason, actual.reason
        ));
    }
    let canon = |v: &serde_json::Value| v.to_string();
    let mut want: Vec<String> = expect.obligations.iter().map(canon).collect();
    let mut got: Vec<String> = actual
        .obligations
        .iter()
        .map(|o| canon(&serde_json::to_value(o).unwrap_or_default()))
        .collect();
    want.sort();
    got.sort();
    if want != got {
        diffs.push(format!(
            "obligations: expected [{}], got [{}]",
            want.join(", "),
            got.join(", ")
        ));
    }
    if diffs.is_empty() {
        None
    } else {
        if let Some(d) = detail {
            diffs.push(format!("({d})"));
        }
        Some(diffs.join("; "))
    }
}

fn coverage(
    bundle: &Bundle,
    point: &DecisionPoint,
    tests: &[crate::decision::RuleInfo],
    fixtures: &[(String, Fixture)],
) -> Result<Vec<FileCoverage>, RunnerError> {
    let mut engine = build_engine(bundle)?;
    engine.set_enable_coverage(true);
    for t in tests {
        engine.set_input(regorus::Value::new_object());
        let _ = engine.eval_rule(format!("data.{}.{}", t.package, t.name));
    }
    for (_, f) in fixtures {
        engine.set_input(regorus::Value::from(f.input.clone()));
        let _ = engine.eval_rule(point.options().entrypoint.clone());
    }
    let report = engine
        .get_coverage_report()
        .map_err(|e| RunnerError::Fixture {
            path: bundle.source().display().to_string(),
            reason: format!("coverage: {e}"),
        })?;
    Ok(report
        .files
        .into_iter()
        .filter(|f| !f.path.ends_with("_test.rego"))
        .map(|f| {
            let (c, n) = (f.covered.len(), f.not_covered.len());
            FileCoverage {
                file: f.path,
                percent: if c + n == 0 {
                    100.0
                } else {
                    100.0 * c as f64 / (c + n) as f64
                },
                covered: f.covered.into_iter().collect(),
                not_covered: f.not_covered.into_iter().collect(),
            }
        })
        .collect())
}
