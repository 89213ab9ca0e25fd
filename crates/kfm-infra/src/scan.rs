//! Walking a tree and running the checks on every file, deterministically.

use std::path::{Path, PathBuf};

use crate::finding::{Finding, Report, Rule};
use crate::secrets::{Scanner, SecretRule, built_in_rules};

/// Directories never descended into (tool state, not configuration).
const SKIP_DIRS: &[&str] = &[".git", "target", "node_modules", ".terraform"];

/// The Kubernetes Secret rule (a built-in of the secret scanner: other
/// scanners miss `stringData`).
pub const K8S_SECRET: &str = "KFM-K8S-001";

/// The generic rule skipped in encrypted-secret files.
const GENERIC_ASSIGNMENT: &str = "KFM-SEC-008";

/// Why a tree could not be evaluated (exit 2): nothing is reported as clean
/// when part of it could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}:{column}: YAML does not parse: {reason}")]
    Yaml {
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "{path}:{line}: unrendered template (`{{{{`): render it (helm template, kustomize build) and check the output"
    )]
    Template { path: String, line: usize },
}

/// What to run.
pub struct Options {
    /// Extra secret rules (from `--rules gitleaks.toml`).
    pub extra_rules: Vec<SecretRule>,
}

/// Checks every file under each of `dirs` (or the files themselves).
pub fn check(dirs: &[PathBuf], opts: Options) -> Result<Report, ScanError> {
    let mut rules = built_in_rules();
    rules.extend(opts.extra_rules);
    let scanner = Scanner::new(rules);
    let mut files = Vec::new();
    for d in dirs {
        collect(d, &mut files)?;
    }
    files.sort();
    files.dedup();
    let mut report = Report {
        tool: "kfm infra check".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        rules: scanner
            .rules()
            .iter()
            .map(|r| r.rule.clone())
            .chain(std::iter::once(Rule {
                id: K8S_SECRET.into(),
                title: "Kubernetes Secret with data or stringData in the repository".into(),
                hint: "commit a SealedSecret, an ExternalSecret or a SOPS-encrypted file instead; rotate what was committed".into(),
                pattern: None,
            }))
            .collect(),
        ..Report::default()
    };
    // Files are independent: two workers (the machine's cores) take every
    // other file; results are merged and sorted, so output does not depend
    // on scheduling. The first error in file order wins, as in one pass.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let parts: Vec<Vec<Result<FileResult, (usize, ScanError)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (files, scanner) = (&files, &scanner);
                s.spawn(move || {
                    files
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, p)| check_file(p, scanner).map_err(|e| (i, e)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut first_error: Option<(usize, ScanError)> = None;
    for r in parts.into_iter().flatten() {
        match r {
            Ok(FileResult::Binary) => report.binary_files_skipped += 1,
            Ok(FileResult::Text(f)) => {
                report.files_scanned += 1;
                report.findings.extend(f);
            }
            Err((i, e)) => {
                if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                    first_error = Some((i, e));
                }
            }
        }
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    report.findings.sort();
    report.findings.dedup();
    Ok(report)
}

enum FileResult {
    Binary,
    Text(Vec<Finding>),
}

fn check_file(path: &Path, scanner: &Scanner) -> Result<FileResult, ScanError> {
    let bytes = std::fs::read(path).map_err(|e| ScanError::Read {
        path: display(path),
        reason: e.to_string(),
    })?;
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Ok(FileResult::Binary);
    }
    let text = String::from_utf8_lossy(&bytes);
    let name = display(path);
    let yaml = is_yaml(path);
    // Encrypted secrets (SealedSecret, SOPS) are the approved form: the
    // generic "secret assigned" rule would only see ciphertext there.
    let encrypted = yaml && (text.contains("kind: SealedSecret") || text.contains("\nsops:"));
    let mut out = Vec::new();
    for h in scanner.scan(&text) {
        let r = &scanner.rules()[h.rule].rule;
        if encrypted && r.id == GENERIC_ASSIGNMENT {
            continue;
        }
        out.push(Finding {
            file: name.clone(),
            line: h.line,
            column: h.column,
            rule: r.id.clone(),
            message: format!("{} found", r.title),
            snippet: h.masked_line,
        });
    }
    // Every YAML file must parse (a parse error or an unrendered template
    // stops the run); documents with a `kind` are read for the Kubernetes
    // rules.
    if yaml {
        out.extend(kubernetes_secrets(&name, &text)?);
    }
    Ok(FileResult::Text(out))
}

fn display(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

fn is_yaml(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScanError> {
    let meta = std::fs::symlink_metadata(p).map_err(|e| ScanError::Read {
        path: display(p),
        reason: e.to_string(),
    })?;
    if meta.is_file() {
        out.push(p.to_path_buf());
    } else if meta.is_dir() {
        let rd = std::fs::read_dir(p).map_err(|e| ScanError::Read {
            path: display(p),
            reason: e.to_string(),
        })?;
        for entry in rd {
            let entry = entry.map_err(|e| ScanError::Read {
                path: display(p),
                reason: e.to_string(),
            })?;
            let child = entry.path();
            let skip = child
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| SKIP_DIRS.contains(&n));
            if !skip {
                collect(&child, out)?;
            }
        }
    }
    // Symlinks are not followed: the tree is what is committed.
    Ok(())
}

/// A line holding a template action `{{` that is not a `${{` expression.
fn unrendered(line: &str) -> bool {
    line.match_indices("{{")
        .any(|(i, _)| i == 0 || line.as_bytes()[i - 1] != b'$')
}

/// `kind: Secret` documents carrying `data` or `stringData`.
fn kubernetes_secrets(name: &str, text: &str) -> Result<Vec<Finding>, ScanError> {
    let mut out = Vec::new();
    // Split on document markers, keeping each document's first line number.
    let mut docs: Vec<(usize, String)> = Vec::new();
    let mut cur = String::new();
    let mut first = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((first, std::mem::take(&mut cur)));
            first = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((first, cur));
    for (start, doc) in docs {
        if doc.trim().is_empty() {
            continue;
        }
        // `{{` (Helm/Go templates) often still parses as YAML, as a nested
        // flow mapping: look for it first. `${{ … }}` is a CI expression.
        if let Some(i) = doc.lines().position(unrendered) {
            return Err(ScanError::Template {
                path: name.to_owned(),
                line: start + i,
            });
        }
        // Documents that cannot be Kubernetes objects are only validated
        // (no value tree is built: much cheaper on large YAML).
        let parsed: Result<Option<serde_yaml_ng::Value>, _> = if doc.contains("kind:") {
            serde_yaml_ng::from_str(&doc).map(Some)
        } else {
            serde_yaml_ng::from_str::<serde::de::IgnoredAny>(&doc).map(|_| None)
        };
        let value = match parsed {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map_or((start, 1), |l| (start + l.line() - 1, l.column()));
                return Err(ScanError::Yaml {
                    path: name.to_owned(),
                    line,
                    column,
                    reason: e.to_string(),
                });
            }
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
            continue;
        }
        for key in ["data", "stringData"] {
            let non_empty = value.get(key).is_some_and(|v| match v {
                serde_yaml_ng::Value::Mapping(m) => !m.is_empty(),
                serde_yaml_ng::Value::Null => false,
                _ => true,
            });
            if !non_empty {
                continue;
            }
            let (i, l) = doc
                .lines()
                .enumerate()
                .find(|(_, l)| l.starts_with(&format!("{key}:")))
                .unwrap_or((0, ""));
            out.push(Finding {
                file: name.to_owned(),
                line: (start + i) as u32,
                column: 1,
                rule: K8S_SECRET.into(),
                message: format!("Secret with {key} committed to the repository"),
                snippet: l.to_owned(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_that_does_not_parse_is_an_error_with_its_position() {
        let e = kubernetes_secrets("x.yaml", "a: b\nc: [d, e\nf: g\n").unwrap_err();
        assert!(e.to_string().starts_with("x.yaml:"), "{e}");
        let e = kubernetes_secrets("x.yaml", "ok: 1\n---\nkey: \"unterminated\n").unwrap_err();
        assert!(e.to_string().starts_with("x.yaml:4:"), "{e}");
        let e = kubernetes_secrets("x.yaml", "a: 1\nb: {{ .Values.b }}\n").unwrap_err();
        assert!(
            e.to_string().starts_with("x.yaml:2: unrendered template"),
            "{e}"
        );
        // A CI expression is not a template.
        assert!(kubernetes_secrets("w.yml", "run: echo ${{ github.sha }}\n").is_ok());
    }
}
