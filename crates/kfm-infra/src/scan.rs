//! Walking a tree and running the checks on every file, deterministically.

use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;

use crate::finding::{Finding, Report, structural_rules};
use crate::k8s::{self, Object};
use crate::secrets::{Scanner, SecretRule, built_in_rules};
use crate::terraform::{self, TfFile};
use crate::yaml::Doc;
use crate::{netpol, platform, render, waivers, workflows, yaml};

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
    #[error("{path}:{line}: cannot render this kustomization: {reason}")]
    Render {
        path: String,
        line: usize,
        reason: String,
    },
    /// A desired-state file under `infra/platform/` (or the drift
    /// ignore file) that does not parse or does not resolve.
    #[error("desired platform state: {0}")]
    Platform(crate::platform::PlatformError),
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
    // Patch files named by kustomizations hold fragments: they are judged
    // inside the objects they patch (rendered below), not as objects.
    let kustomizations: Vec<String> = files
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| render::KUSTOMIZATION_FILES.contains(&n))
        })
        .map(|p| display(p))
        .collect();
    let fragments: BTreeSet<String> = kustomizations
        .iter()
        .flat_map(|k| {
            let text = std::fs::read_to_string(k).unwrap_or_default();
            render::patch_files(k, &text)
        })
        .collect();
    // Files are independent: each worker (one per core) takes every n-th
    // file; results are merged and sorted, so output does not depend on
    // scheduling. The first error in file order wins, as in one pass.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let parts: Vec<Vec<Result<FileResult, (usize, ScanError)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (files, scanner, fragments) = (&files, &scanner, &fragments);
                s.spawn(move || {
                    files
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, p)| {
                            let fragment = fragments.contains(&display(p));
                            check_file(p, scanner, fragment).map_err(|e| (i, e))
                        })
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
    // Every platform tree (a directory whose base/ holds desired-state
    // files) must resolve for each environment it has an overlay for.
    let roots: BTreeSet<PathBuf> = files
        .iter()
        .filter(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n == "base")
        })
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| {
                platform::is_platform_file(&t) && !platform::ignore::is_ignore_file(&t)
            })
        })
        .filter_map(|p| p.parent().and_then(Path::parent).map(Path::to_path_buf))
        .collect();
    for root in &roots {
        platform::check_tree(root).map_err(ScanError::Platform)?;
    }
    for (_, module) in terraform::modules(tf_files) {
        findings.extend(terraform::module_findings(&module));
    }
    // Rendered overlays: the same rules on what each kustomization would
    // apply. What the committed files already show is not repeated.
    let raw: BTreeSet<(String, u32, String)> = findings
        .iter()
        .map(|f| (f.file.clone(), f.line, f.rule.clone()))
        .collect();
    for kf in &kustomizations {
        if let Some(rendered) = render::render(kf)? {
            report.rendered.push(render::digest(kf, &rendered)?);
            findings.extend(rendered_findings(kf, rendered, &raw)?);
        }
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

/// The rules' findings on one rendered kustomization that the committed
/// files do not already show. One that a kustomization's change brings in
/// (a patch, an `images` entry, …) points at that change, where the fix
/// goes; any other names the overlay that renders it.
fn rendered_findings(
    kf: &str,
    rendered: Vec<render::RenderedObject>,
    raw: &BTreeSet<(String, u32, String)>,
) -> Result<Vec<Finding>, ScanError> {
    let mut objs = Vec::new();
    let mut srcs = Vec::new();
    for r in rendered {
        match k8s::object(r.doc.clone()) {
            Ok(Some(o)) => {
                objs.push(o);
                srcs.push(r);
            }
            Ok(None) => {}
            Err(e) => {
                // Blame the first change after which the object is invalid.
                let culprit = (0..r.changes.len()).find(|&i| {
                    k8s::object(Doc {
                        value: r.after(i).clone(),
                        ..r.doc.clone()
                    })
                    .is_err()
                });
                return Err(match culprit.map(|i| &r.changes[i]) {
                    Some(c) => ScanError::Render {
                        path: c.file.clone(),
                        line: c.line as usize,
                        reason: format!(
                            "after this change, the object from {}:{} is not valid: {e}",
                            r.doc.file, r.doc.start
                        ),
                    },
                    None => e,
                });
            }
        }
    }
    let mut found: Vec<(Finding, Option<usize>)> = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        found.extend(object_findings(o).into_iter().map(|f| (f, Some(i))));
    }
    let ns_of = |o: &Object| o.namespace.clone().unwrap_or_else(|| "default".into());
    found.extend(
        netpol::analyse(&objs, &ns_of)?
            .into_iter()
            .map(|f| (f, None)),
    );
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (mut f, owner) in found {
        if raw.contains(&(f.file.clone(), f.line, f.rule.clone())) {
            continue;
        }
        let culprit = owner.and_then(|i| {
            let r = &srcs[i];
            let has = |v: &serde_yaml_ng::Value| -> bool {
                let doc = Doc {
                    value: v.clone(),
                    ..r.doc.clone()
                };
                matches!(k8s::object(doc), Ok(Some(o)) if object_findings(&o)
                    .iter()
                    .any(|x| x.rule == f.rule && x.message == f.message))
            };
            let mut before = has(&r.changes.first()?.before);
            for (j, c) in r.changes.iter().enumerate() {
                let after = has(r.after(j));
                if !before && after {
                    return Some((&objs[i], c));
                }
                before = after;
            }
            None
        });
        match culprit {
            Some((o, c)) => {
                let text = texts
                    .entry(c.file.clone())
                    .or_insert_with(|| std::fs::read_to_string(&c.file).unwrap_or_default());
                f.message = format!(
                    "{} — {} {} from {}:{}, as changed here",
                    f.message, o.kind, o.name, o.doc.file, o.doc.start
                );
                f.snippet = text
                    .lines()
                    .nth((c.line as usize).saturating_sub(1))
                    .unwrap_or("")
                    .to_owned();
                f.file = c.file.clone();
                f.line = c.line;
                f.column = 1;
            }
            None => f.message = format!("{} — as rendered by {kf}", f.message),
        }
        out.push(f);
    }
    Ok(out)
}

/// The per-object rules.
fn object_findings(o: &Object) -> Vec<Finding> {
    let mut f = k8s::secret_findings(o);
    f.extend(k8s::workload_findings(o));
    f
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

fn check_file(path: &Path, scanner: &Scanner, fragment: bool) -> Result<FileResult, ScanError> {
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
        if platform::is_platform_file(&text) {
            // The platform's desired state: strictly parsed here, and
            // resolved per environment once the whole tree is read.
            if platform::ignore::is_ignore_file(&text) {
                platform::ignore::parse(&name, &text).map_err(ScanError::Platform)?;
            } else {
                platform::parse_text(&name, &text).map_err(ScanError::Platform)?;
            }
        } else if workflows::is_workflow(&name) {
            let docs = yaml::documents(&name, &text)?;
            if let Some(d) = docs.first() {
                out.findings.extend(workflows::findings(d));
            }
        } else if text.contains("kind:") && !fragment {
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
