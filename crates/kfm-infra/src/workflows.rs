//! GitHub Actions workflows: the anti-skip rules.
//!
//! A required check that does not run is reported by GitHub as neither
//! passed nor failed, and branch protection lets the change through. So a
//! *gate workflow* (one whose `name` or file name contains "gate") must
//! always run: no `paths`/`branches` filters on `push` or `pull_request`;
//! its jobs carry no `if:` and no `continue-on-error`; and one summary job
//! runs `if: always()`, needs every other job, and fails unless each of
//! them succeeded (a skipped or cancelled job is a failure).

use crate::finding::Finding;
use crate::yaml::{Doc, Seg};

use serde_yaml_ng::Value;

const FILTERS: &[&str] = &["paths", "paths-ignore", "branches", "branches-ignore"];
const EVENTS: &[&str] = &["push", "pull_request", "pull_request_target", "merge_group"];

/// Whether a file is a GitHub Actions workflow.
pub fn is_workflow(path: &str) -> bool {
    path.contains(".github/workflows/") && (path.ends_with(".yml") || path.ends_with(".yaml"))
}

fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.split('.').next().unwrap_or(name)
}

/// The rules, for one workflow file (its first document).
pub fn findings(doc: &Doc) -> Vec<Finding> {
    let mut out = Vec::new();
    let v = &doc.value;
    let name = v.get("name").and_then(Value::as_str).unwrap_or("");
    let required =
        name.to_lowercase().contains("gate") || stem(&doc.file).to_lowercase().contains("gate");
    if !required {
        return out;
    }
    if let Some(Value::Mapping(on)) = v.get("on") {
        for ev in EVENTS {
            if let Some(Value::Mapping(cfg)) = on.get(*ev) {
                for f in FILTERS {
                    if cfg.contains_key(*f) {
                        out.push(Finding::at_doc(
                            doc,
                            &[Seg::Key("on"), Seg::Key(ev), Seg::Key(f)],
                            "KFM-CI-001",
                            format!("gate workflow {name:?} filters {ev} by {f}: the required check can be skipped"),
                        ));
                    }
                }
            }
        }
    }
    let Some(Value::Mapping(jobs)) = v.get("jobs") else {
        out.push(Finding::at_doc(
            doc,
            &[Seg::Key("jobs")],
            "KFM-CI-003",
            format!("gate workflow {name:?} has no jobs"),
        ));
        return out;
    };
    let ids: Vec<&str> = jobs.keys().filter_map(Value::as_str).collect();
    let always = |j: &Value| {
        j.get("if")
            .and_then(Value::as_str)
            .is_some_and(|c| c.replace(' ', "").contains("always()"))
    };
    let summary = ids
        .iter()
        .copied()
        .find(|id| jobs.get(*id).is_some_and(always));
    for id in &ids {
        let Some(job) = jobs.get(*id) else { continue };
        if Some(*id) != summary && job.get("if").is_some() {
            out.push(Finding::at_doc(
                doc,
                &[Seg::Key("jobs"), Seg::Key(id), Seg::Key("if")],
                "KFM-CI-002",
                format!("required job {id} has an if: condition and can be skipped"),
            ));
        }
        if job
            .get("continue-on-error")
            .is_some_and(|c| c.as_bool() != Some(false))
        {
            out.push(Finding::at_doc(
                doc,
                &[
                    Seg::Key("jobs"),
                    Seg::Key(id),
                    Seg::Key("continue-on-error"),
                ],
                "KFM-CI-002",
                format!("required job {id} may fail without failing the gate (continue-on-error)"),
            ));
        }
    }
    let Some(sid) = summary else {
        out.push(Finding::at_doc(
            doc,
            &[Seg::Key("jobs")],
            "KFM-CI-003",
            format!("gate workflow {name:?} has no summary job with if: always()"),
        ));
        return out;
    };
    let sjob = jobs.get(sid).unwrap_or(&Value::Null);
    let needs: Vec<&str> = match sjob.get("needs") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Sequence(s)) => s.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let missing: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| *id != sid && !needs.contains(id))
        .collect();
    if !missing.is_empty() {
        out.push(Finding::at_doc(
            doc,
            &[Seg::Key("jobs"), Seg::Key(sid), Seg::Key("needs")],
            "KFM-CI-003",
            format!("gate summary {sid} does not need {}", missing.join(", ")),
        ));
    }
    if !counts_every_result(sjob) {
        out.push(Finding::at_doc(
            doc,
            &[Seg::Key("jobs"), Seg::Key(sid)],
            "KFM-CI-004",
            format!("gate summary {sid} does not fail when a needed job is skipped or cancelled"),
        ));
    }
    out
}

/// Whether the summary job fails unless every needed result is `success`.
fn counts_every_result(job: &Value) -> bool {
    if job
        .get("continue-on-error")
        .is_some_and(|c| c.as_bool() != Some(false))
    {
        return false;
    }
    let Some(Value::Sequence(steps)) = job.get("steps") else {
        return false;
    };
    steps.iter().any(|s| {
        let run = s.get("run").and_then(Value::as_str).unwrap_or("");
        let cond = s.get("if").and_then(Value::as_str).unwrap_or("");
        let uses = s.get("uses").and_then(Value::as_str).unwrap_or("");
        let squash = |t: &str| t.replace([' ', '\''], "").replace('"', "").to_lowercase();
        let (run_s, cond_s) = (squash(run), squash(cond));
        // A script over every result, compared with success.
        let script =
            run_s.contains("tojson(needs)") && run_s.contains("success") && run.contains("exit 1");
        // An if: that fails the step on each non-success result.
        let expr = ["failure", "cancelled", "skipped"]
            .iter()
            .all(|r| cond_s.contains(&format!("contains(needs.*.result,{r})")))
            && run.contains("exit 1");
        // re-actors/alls-green, without allowances.
        let alls_green = uses.starts_with("re-actors/alls-green@")
            && s.get("with").is_some_and(|w| {
                w.get("jobs")
                    .and_then(Value::as_str)
                    .is_some_and(|j| squash(j).contains("tojson(needs)"))
                    && w.get("allowed-skips").is_none()
                    && w.get("allowed-failures").is_none()
            });
        script || expr || alls_green
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::documents;

    fn run(text: &str) -> Vec<String> {
        let d = documents(".github/workflows/gate.yml", text).unwrap();
        let mut v: Vec<String> = findings(&d[0]).into_iter().map(|f| f.rule).collect();
        v.sort();
        v
    }

    const GOOD: &str = r#"name: gate
on:
  pull_request:
  push:
    tags: ["v*"]
jobs:
  test:
    runs-on: ubuntu-latest
    steps: [{run: make test}]
  infra:
    runs-on: ubuntu-latest
    steps: [{run: kfm infra check infra/}]
  gate-summary:
    if: always()
    needs: [test, infra]
    runs-on: ubuntu-latest
    steps:
      - run: |
          echo '${{ toJSON(needs) }}' | jq -e 'all(.[]; .result == "success")' || exit 1
"#;

    #[test]
    fn a_compliant_gate_passes() {
        assert_eq!(run(GOOD), Vec::<String>::new());
    }

    #[test]
    fn each_way_to_skip_is_found() {
        assert_eq!(
            run(&GOOD.replace(
                "  pull_request:\n",
                "  pull_request:\n    paths: [\"src/**\"]\n"
            )),
            vec!["KFM-CI-001"]
        );
        assert_eq!(
            run(&GOOD.replace(
                "  push:\n    tags",
                "  push:\n    branches: [main]\n    tags"
            )),
            vec!["KFM-CI-001"]
        );
        assert_eq!(
            run(&GOOD.replace(
                "  test:\n    runs-on",
                "  test:\n    if: github.event_name == 'push'\n    runs-on"
            )),
            vec!["KFM-CI-002"]
        );
        assert_eq!(
            run(&GOOD.replace(
                "  infra:\n    runs-on",
                "  infra:\n    continue-on-error: true\n    runs-on"
            )),
            vec!["KFM-CI-002"]
        );
        assert_eq!(
            run(&GOOD.replace("needs: [test, infra]", "needs: [test]")),
            vec!["KFM-CI-003"]
        );
        assert_eq!(
            run(&GOOD.replace("    if: always()\n", "")),
            vec!["KFM-CI-003"]
        );
        // Counting only failures lets skipped and cancelled through.
        let only_failure = GOOD.replace(
            "      - run: |\n          echo '${{ toJSON(needs) }}' | jq -e 'all(.[]; .result == \"success\")' || exit 1\n",
            "      - if: contains(needs.*.result, 'failure')\n        run: exit 1\n",
        );
        assert_eq!(run(&only_failure), vec!["KFM-CI-004"]);
        let all_three = GOOD.replace(
            "      - run: |\n          echo '${{ toJSON(needs) }}' | jq -e 'all(.[]; .result == \"success\")' || exit 1\n",
            "      - if: contains(needs.*.result, 'failure') || contains(needs.*.result, 'cancelled') || contains(needs.*.result, 'skipped')\n        run: exit 1\n",
        );
        assert_eq!(run(&all_three), Vec::<String>::new());
        // Workflows that are not gates are not held to this.
        let d = documents(
            ".github/workflows/docs.yml",
            &GOOD.replace("name: gate", "name: docs").replace(
                "  pull_request:\n",
                "  pull_request:\n    paths: [docs/**]\n",
            ),
        )
        .unwrap();
        assert!(findings(&d[0]).is_empty());
    }
}
