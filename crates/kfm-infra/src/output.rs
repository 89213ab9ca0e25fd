//! The report in four forms: human (grouped by file, with the offending
//! line), JSON, SARIF 2.1.0 and JUnit. All are pure functions of the report,
//! which is sorted, so two runs give the same bytes.

use std::collections::BTreeMap;

use serde_json::json;

use crate::finding::Report;

/// Output formats of `kfm infra check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Sarif,
    Junit,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(Format::Human),
            "json" => Ok(Format::Json),
            "sarif" => Ok(Format::Sarif),
            "junit" => Ok(Format::Junit),
            other => Err(format!(
                "unknown output format {other:?}: use human, json, sarif or junit"
            )),
        }
    }
}

pub fn render(r: &Report, f: Format) -> String {
    match f {
        Format::Human => human(r),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(r).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Sarif => sarif(r),
        Format::Junit => junit(r),
    }
}

fn human(r: &Report) -> String {
    let mut out = String::new();
    let mut by_file: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for f in &r.findings {
        by_file.entry(f.file.as_str()).or_default().push(f);
    }
    for (file, fs) in &by_file {
        out.push_str(&format!("{file}\n"));
        for f in fs {
            out.push_str(&format!(
                "  {}:{}  {}  {}\n      | {}\n",
                f.line,
                f.column,
                f.rule,
                f.message,
                f.snippet.trim_end()
            ));
            if let Some(rule) = r.rule(&f.rule) {
                out.push_str(&format!("      fix: {}\n", rule.hint));
            }
        }
    }
    for w in &r.waived {
        out.push_str(&format!(
            "waived  {}:{}  {}  (waiver {}:{}, owner {}, expires {}: {})\n",
            w.finding.file,
            w.finding.line,
            w.finding.rule,
            w.waiver.file,
            w.waiver.line,
            w.waiver.owner,
            w.waiver.expires,
            w.waiver.reason
        ));
    }
    for w in &r.unused_waivers {
        out.push_str(&format!(
            "unused waiver  {}:{}  {} on {}: it excuses nothing; remove it\n",
            w.file, w.line, w.rule, w.target
        ));
    }
    out.push_str(&format!(
        "{} findings in {} files, {} waived ({} files scanned, {} binary skipped)\n",
        r.findings.len(),
        by_file.len(),
        r.waived.len(),
        r.files_scanned,
        r.binary_files_skipped
    ));
    out
}

fn sarif(r: &Report) -> String {
    let index: BTreeMap<&str, usize> = r
        .rules
        .iter()
        .enumerate()
        .map(|(i, x)| (x.id.as_str(), i))
        .collect();
    let rules: Vec<_> = r
        .rules
        .iter()
        .map(|x| {
            json!({
                "id": x.id,
                "name": x.title,
                "shortDescription": {"text": x.title},
                "help": {"text": x.hint},
                "defaultConfiguration": {"level": "error"}
            })
        })
        .collect();
    let all = r
        .findings
        .iter()
        .map(|f| (f, None))
        .chain(r.waived.iter().map(|w| (&w.finding, Some(&w.waiver))));
    let results: Vec<_> = all
        .map(|(f, waiver)| {
            let mut res = json!({
                "ruleId": f.rule,
                "level": "error",
                "message": {"text": f.message},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.file},
                        "region": {
                            "startLine": f.line,
                            "startColumn": f.column,
                            "snippet": {"text": f.snippet}
                        }
                    }
                }]
            });
            if let Some(i) = index.get(f.rule.as_str()) {
                res["ruleIndex"] = json!(i);
            }
            if let Some(w) = waiver {
                res["suppressions"] = json!([{
                    "kind": "external",
                    "status": "accepted",
                    "justification": format!("{} (owner {}, expires {}, waiver {}:{})", w.reason, w.owner, w.expires, w.file, w.line)
                }]);
            }
            res
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "kfm",
                "version": r.version,
                "informationUri": "https://kfm.example.org/docs/infra-gate",
                "rules": rules
            }},
            "results": results
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

fn junit(r: &Report) -> String {
    use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};
    let mut report = JReport::new("kfm infra check");
    // One suite per rule, one failing case per finding, one passing case
    // for a rule that found nothing (so dashboards see it ran).
    for rule in &r.rules {
        let mut suite = TestSuite::new(rule.id.as_str());
        let mine: Vec<_> = r.findings.iter().filter(|f| f.rule == rule.id).collect();
        if mine.is_empty() && !r.waived.iter().any(|w| w.finding.rule == rule.id) {
            suite.add_test_case(TestCase::new(
                rule.title.as_str(),
                TestCaseStatus::success(),
            ));
        }
        for w in r.waived.iter().filter(|w| w.finding.rule == rule.id) {
            let f = &w.finding;
            let mut s = TestCaseStatus::skipped();
            s.set_message(format!(
                "waived: {} (owner {}, expires {})",
                w.waiver.reason, w.waiver.owner, w.waiver.expires
            ));
            let mut case = TestCase::new(format!("{}:{}:{}", f.file, f.line, f.column), s);
            case.set_classname(rule.id.as_str());
            suite.add_test_case(case);
        }
        for f in mine {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!("{} ({})", f.message, rule.hint));
            let mut case = TestCase::new(format!("{}:{}:{}", f.file, f.line, f.column), s);
            case.set_classname(rule.id.as_str());
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.to_string().unwrap_or_default()
}
