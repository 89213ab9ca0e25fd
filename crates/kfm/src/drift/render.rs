//! A drift report in three forms: human text, JSON and SARIF 2.1.0 (the
//! gate's own SARIF writer, so code-scanning dashboards show drift beside
//! `kfm infra check`'s findings).

use std::path::Path;

use kfm_drift::{Drift, Report, Severity};
use kfm_infra::{Finding, Rule};
use serde::Serialize;

use super::KnownGood;
use crate::failure::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Human,
    Json,
    Sarif,
}

impl Out {
    pub fn parse(s: &str) -> Result<Self, Failure> {
        match s {
            "human" => Ok(Out::Human),
            "json" => Ok(Out::Json),
            "sarif" => Ok(Out::Sarif),
            other => Err(Failure::input(format!(
                "--output {other}=…: unknown format; use human, json or sarif"
            ))),
        }
    }
}

pub struct Doc<'a> {
    pub report: &'a Report,
    pub commit: Option<&'a str>,
    pub last_known_good: Option<&'a KnownGood>,
    /// The desired-state tree (unmanaged resources point at its base).
    pub root: &'a Path,
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    #[serde(flatten)]
    report: &'a Report,
    clean: bool,
    commit: Option<&'a str>,
    last_known_good: Option<&'a KnownGood>,
}

pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::High => "HIGH",
        Severity::Medium => "MEDIUM",
        Severity::Low => "LOW",
    }
}

fn rule_id(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "KFM-DRIFT-CRITICAL",
        Severity::High => "KFM-DRIFT-HIGH",
        Severity::Medium => "KFM-DRIFT-MEDIUM",
        Severity::Low => "KFM-DRIFT-UNMANAGED",
    }
}

impl Doc<'_> {
    pub fn render(&self, f: Out) -> String {
        match f {
            Out::Human => self.human(),
            Out::Json => {
                let d = JsonDoc {
                    report: self.report,
                    clean: self.report.is_clean(),
                    commit: self.commit,
                    last_known_good: self.last_known_good,
                };
                let mut s = serde_json::to_string_pretty(&d)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                s.push('\n');
                s
            }
            Out::Sarif => self.sarif(),
        }
    }

    fn human(&self) -> String {
        let r = self.report;
        let mut out = String::new();
        let compared: Vec<String> = r.compared.iter().map(|(e, n)| format!("{n} {e}")).collect();
        if r.is_clean() {
            out.push_str(&format!(
                "no drift in {}: {} resources compared ({}) in {} ms\n",
                r.env,
                r.compared.values().sum::<usize>(),
                compared.join(", "),
                r.elapsed_ms
            ));
        } else {
            out.push_str(&format!(
                "drift in {}: {} difference(s) ({} resources compared: {}) in {} ms\n",
                r.env,
                r.drifts.len(),
                r.compared.values().sum::<usize>(),
                compared.join(", "),
                r.elapsed_ms
            ));
        }
        for d in &r.drifts {
            out.push_str(&line(d));
        }
        for d in &r.ignored {
            out.push_str(&line(d));
        }
        match self.last_known_good {
            Some(k) => out.push_str(&format!(
                "last known-good commit: {} (clean at {})\n",
                k.commit,
                k.at.to_rfc3339()
            )),
            None => out.push_str("last known-good commit: none recorded yet\n"),
        }
        out
    }

    fn sarif(&self) -> String {
        let rules = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low]
            .into_iter()
            .map(|s| Rule {
                id: rule_id(s).into(),
                title: format!("{} drift of the live platform from git", severity(s).to_lowercase()),
                hint: match s {
                    Severity::Low => "name it in infra/platform (kfm drift adopt) or declare it ensure: absent".into(),
                    _ => "restore git's state (kfm drift reconcile, delivery mode), or codify the live change (kfm drift adopt)".into(),
                },
                pattern: None,
            })
            .collect();
        let findings = self
            .report
            .drifts
            .iter()
            .map(|d| {
                let (file, line, snippet) = locate(d, self.root, &self.report.env);
                Finding {
                    file,
                    line,
                    column: 1,
                    rule: rule_id(d.severity).into(),
                    message: d.message.clone(),
                    snippet,
                }
            })
            .collect();
        let rep = kfm_infra::Report {
            tool: "kfm drift detect".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            rules,
            findings,
            ..kfm_infra::Report::default()
        };
        kfm_infra::render(&rep, kfm_infra::Format::Sarif)
    }
}

fn line(d: &Drift) -> String {
    let mut s = format!(
        "  {:<8} {} {} {}: live {}, git {}\n",
        severity(d.severity),
        d.engine,
        d.resource,
        d.field,
        d.live,
        d.desired
    );
    let mut meta = Vec::new();
    if let Some(t) = d.since {
        meta.push(format!("since {}", t.to_rfc3339()));
    }
    if !d.source.is_empty() {
        meta.push(format!("declared in {}", d.source));
    }
    if !d.fixable {
        meta.push("reported only: reconcile never removes what git does not name".into());
    }
    if let Some(i) = &d.ignored {
        meta.push(format!(
            "IGNORED until {} ({}, owner {}, drift-ignore.yaml:{})",
            i.expires, i.reason, i.owner, i.line
        ));
    }
    if !meta.is_empty() {
        s.push_str(&format!("           {}\n", meta.join(" · ")));
    }
    s
}

/// The file and line where git states a drifted resource: the last
/// source (an overlay wins over the base) with a line naming it.
fn locate(d: &Drift, root: &Path, env: &str) -> (String, u32, String) {
    // A Kubernetes object names its manifest as `file:line (…)`.
    if d.resource.starts_with("k8s/")
        && let Some((file, rest)) = d.source.split_once(':')
        && let Some(line) = rest.split(' ').next().and_then(|l| l.parse::<u32>().ok())
    {
        return (file.to_owned(), line, String::new());
    }
    let name = d
        .resource
        .split_once('/')
        .map_or(d.resource.as_str(), |x| x.1);
    let name = match d.resource.split('/').next() {
        Some("table") => name.split('.').next().unwrap_or(name),
        Some("consumer") => name.rsplit('/').next().unwrap_or(name),
        _ => name,
    };
    let files: Vec<&str> = d.source.split(" + ").filter(|s| !s.is_empty()).collect();
    for f in files.iter().rev() {
        if let Ok(text) = std::fs::read_to_string(f) {
            for (i, l) in text.lines().enumerate() {
                let l2 = l
                    .replace("${env}", env)
                    .replace("${ENV}", &env.to_ascii_uppercase());
                let bare = l2.trim_start().trim_start_matches("- ");
                if bare.starts_with("name:") || bare.starts_with("bucket:") {
                    let v = bare
                        .split_once(':')
                        .map_or("", |x| x.1)
                        .trim()
                        .trim_matches('"');
                    if v == name {
                        return ((*f).to_owned(), i as u32 + 1, l.to_owned());
                    }
                }
            }
        }
    }
    let base = files
        .first()
        .map(|s| (*s).to_owned())
        .unwrap_or_else(|| root.join("base/platform.yaml").display().to_string());
    (base, 1, String::new())
}
