//! Walking a tree and running the checks on every file, deterministically.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::finding::{Finding, Report, structural_rules};
use crate::k8s::{self, Object};
use crate::secrets::{Scanner, SecretRule, built_in_rules};
use crate::terraform::{self, TfFile};
use crate::{netpol, waivers, workflows, yaml};

/// Directories never descended into (tool state, not configuration).
const SKIP_DIRS: &[&str] = &[".git", "target", "node_modules", ".terraform"];

/// The generic rule skipped in encrypted-secret files.
const GENERIC_ASSIGNMENT: &str = "KFM-SEC-008";

/// Why a tree could not be evaluated (exit 2): nothing is reported as clean
/// when part of it could not be read, parsed or modelled.
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
    #[error(
        "{path}:{line}:{column}: unknown field {field} in {kind}: Kubernetes 1.36 (the version the gate is built against) does not define it (a typo here would silently drop a setting); fix or remove it"
    )]
    UnknownField {
        path: String,
        line: usize,
        column: usize,
        kind: String,
        field: String,
    },
    #[error("{path}:{line}: {reason}")]
    Schema {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "{path}:{line}: cannot model {what}: isolation cannot be proved with CNI-specific policies; express it as a networking.k8s.io/v1 NetworkPolicy, or check this tree with the CNI's own tooling"
    )]
    Unmodelled {
        path: String,
        line: usize,
        what: String,
    },
    #[error("{path}:{line}:{column}: HCL does not parse: {reason}")]
    Hcl {
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{path}:{line}: waiver file: {reason}")]
    Waivers {
        path: String,
        line: usize,
        reason: String,
    },
}

/// What to run.
pub struct Options {
    /// Extra secret rules (from `--rules gitleaks.toml`).
    pub extra_rules: Vec<SecretRule>,
    /// The waiver file, if any.
    pub waivers: Option<PathBuf>,
    /// The date waivers expire against.
    pub today: NaiveDate,
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
            .chain(structural_rules())
            .collect(),
        ..Report::default()
    };
    // Waivers are read first: a bad waiver file stops the run before any
    // work is done.
    let (waivers, waiver_text) = match &opts.waivers {
        None => (Vec::new(), String::new()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ScanError::Read {
                path: display(p),
                reason: e.to_string(),
            })?;
            (waivers::load(&display(p), &text)?, text)
        }
    };
    // Files are independent: each worker (one per core) takes every n-th
    // file; results are merged and sorted, so output does not depend on
    // scheduling. The first error in file order wins, as in one pass.
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
    let mut findings = Vec::new();
    let mut objects: Vec<Object> = Vec::new();
    let mut tf_files = Vec::new();
    for r in parts.into_iter().flatten() {
        match r {
            Ok(FileResult::Binary) => report.binary_files_skipped += 1,
            Ok(FileResult::Text(f)) => {
                report.files_scanned += 1;
                findings.extend(f.findings);
                objects.extend(f.objects);
                tf_files.extend(f.terraform);
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
    // Tree-wide rules: objects are in file order (for stable anchors).
    objects.sort_by(|a, b| (&a.doc.file, a.doc.start).cmp(&(&b.doc.file, b.doc.start)));
    let kustomize_ns: BTreeMap<String, String> = objects
        .iter()
        .filter(|o| {
            o.kind == "Kustomization" && o.api_version.starts_with("kustomize.config.k8s.io/")
        })
        .filter_map(|o| {
            let ns = o.doc.value.get("namespace")?.as_str()?.to_owned();
            Some((parent_dir(&o.doc.file).to_owned(), ns))
        })
        .collect();
    let ns_of = |o: &Object| -> String {
        if let Some(ns) = &o.namespace {
            return ns.clone();
        }
        let mut dir = parent_dir(&o.doc.file);
        loop {
            if let Some(ns) = kustomize_ns.get(dir) {
                return ns.clone();
            }
            if dir.is_empty() {
                return "default".into();
            }
            dir = parent_dir(dir);
        }
    };
    findings.extend(netpol::analyse(&objects, &ns_of)?);
    for (_, module) in terraform::modules(tf_files) {
        findings.extend(terraform::module_findings(&module));
    }
    findings.sort();
    findings.dedup();
    let (failing, mut waived, mut unused) =
        waivers::apply(findings, &waivers, opts.today, &waiver_text);
    report.findings = failing;
    report.findings.sort();
    waived.sort();
    unused.sort();
    report.waived = waived;
    report.unused_waivers = unused;
    Ok(report)
}

fn parent_dir(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

enum FileResult {
    Binary,
    Text(FileOut),
}

#[derive(Default)]
struct FileOut {
    findings: Vec<Finding>,
    objects: Vec<Object>,
    terraform: Option<TfFile>,
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
    let mut out = FileOut::default();
    for h in scanner.scan(&text) {
        let r = &scanner.rules()[h.rule].rule;
        if encrypted && r.id == GENERIC_ASSIGNMENT {
            continue;
        }
        out.findings.push(Finding {
            file: name.clone(),
            line: h.line,
            column: h.column,
            rule: r.id.clone(),
            message: format!("{} found", r.title),
            snippet: h.masked_line,
        });
    }
    // Every YAML file must parse (a parse error or an unrendered template
    // stops the run). Workflows get the CI rules; documents with a `kind`
    // are read as Kubernetes objects; other YAML is only validated.
    if yaml {
        if workflows::is_workflow(&name) {
            let docs = yaml::documents(&name, &text)?;
            if let Some(d) = docs.first() {
                out.findings.extend(workflows::findings(d));
            }
        } else if text.contains("kind:") {
            for d in yaml::documents(&name, &text)? {
                if let Some(o) = k8s::object(d)? {
                    out.findings.extend(k8s::secret_findings(&o));
                    out.findings.extend(k8s::workload_findings(&o));
                    out.objects.push(o);
                }
            }
        } else {
            yaml::validate(&name, &text)?;
        }
    } else if path.extension().is_some_and(|e| e == "tf") {
        out.terraform = Some(terraform::parse(&name, &text)?);
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
