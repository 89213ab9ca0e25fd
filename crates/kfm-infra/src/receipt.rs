//! Plan and apply receipts, and the change-control gate that decides
//! whether a mutating command may run at all.
//!
//! A *plan receipt* says what a change is before it is applied: the commits,
//! every changed file with its digest at the head commit, the digest of
//! what each kustomization renders to at head, the gate's
//! findings on the head tree, and the tools that judged it. An *apply
//! receipt* (kind `kfm.infra.ApplyReceipt`) says what was applied where, by
//! whom and how, with the digests of what went in and came out. The CLI
//! signs both kinds and appends apply receipts to the ledger; this module
//! only builds them (it never holds a key).

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::finding::Finding;

/// The file, at the repository root, that approves delivery.
pub const APPROVAL_FILE: &str = "DELIVERY_APPROVED.yaml";

/// Whether mutating commands may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// `delivery.approved: true`, by a named approver, not expired.
    Delivery {
        approver: String,
        change: Option<String>,
        expires: Option<NaiveDate>,
    },
    /// Read-only: anything may be analysed, nothing applied or recorded.
    Analysis { reason: String },
}

impl Mode {
    pub fn is_delivery(&self) -> bool {
        matches!(self, Mode::Delivery { .. })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalFile {
    delivery: Approval,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    approved: bool,
    approver: Option<String>,
    change: Option<String>,
    expires: Option<String>,
}

/// Reads `DELIVERY_APPROVED.yaml` in `repo`. Anything but a well-formed,
/// current approval is analysis mode, with the reason (fail closed).
pub fn change_control(repo: &Path, today: NaiveDate) -> Mode {
    let path = repo.join(APPROVAL_FILE);
    let analysis = |reason: String| Mode::Analysis { reason };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return analysis(format!("{} does not exist", path.display()));
        }
        Err(e) => return analysis(format!("cannot read {}: {e}", path.display())),
    };
    let f: ApprovalFile = match serde_yaml_ng::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            return analysis(format!(
                "{} is malformed ({e}); expected delivery: {{approved: true, approver: NAME, change: ID, expires: YYYY-MM-DD}}",
                path.display()
            ));
        }
    };
    let d = f.delivery;
    if !d.approved {
        return analysis(format!("{} says delivery.approved: false", path.display()));
    }
    let Some(approver) = d.approver.filter(|a| !a.trim().is_empty()) else {
        return analysis(format!(
            "{} approves delivery without naming delivery.approver",
            path.display()
        ));
    };
    let expires = match d
        .expires
        .as_deref()
        .map(|e| NaiveDate::parse_from_str(e, "%Y-%m-%d"))
    {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(_)) => {
            return analysis(format!(
                "{}: delivery.expires is not a date (YYYY-MM-DD)",
                path.display()
            ));
        }
    };
    if expires.is_some_and(|e| e < today) {
        return analysis(format!(
            "{}: the approval expired on {}",
            path.display(),
            expires.map(|e| e.to_string()).unwrap_or_default()
        ));
    }
    Mode::Delivery {
        approver,
        change: d.change,
        expires,
    }
}

/// Why a receipt could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("git {args}: {reason}")]
    Git { args: String, reason: String },
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Runs git in `repo`, returning stdout.
pub fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, ReceiptError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| ReceiptError::Git {
            args: args.join(" "),
            reason: format!("cannot run git: {e}"),
        })?;
    if !out.status.success() {
        return Err(ReceiptError::Git {
            args: args.join(" "),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

fn git_line(repo: &Path, args: &[&str]) -> Result<String, ReceiptError> {
    Ok(String::from_utf8_lossy(&git(repo, args)?).trim().to_owned())
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A tool and its version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

/// The tools every receipt names: kfm itself and git.
pub fn base_tools(repo: &Path) -> Vec<Tool> {
    let git_version = Command::new("git")
        .arg("--version")
        .current_dir(repo)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("git version ")
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into());
    vec![
        Tool {
            name: "kfm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        Tool {
            name: "git".into(),
            version: git_version,
        },
    ]
}

/// A file and its digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    pub path: String,
    /// `sha256:<hex>`, or `deleted` for a file the change removes.
    pub digest: String,
    pub bytes: u64,
}

/// What a change is, before it is applied.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReceipt {
    pub kind: &'static str,
    pub repo: String,
    pub base: String,
    pub head: String,
    /// Every file that differs between base and head, with its digest at head.
    pub changed: Vec<FileDigest>,
    /// The paths the gate checked at head.
    pub checked: Vec<String>,
    /// What every kustomization under them renders to at head (the objects
    /// that would be applied), by digest.
    pub rendered: Vec<crate::render::RenderedDigest>,
    /// The gate's failing findings on the head tree (empty: clean).
    pub findings: Vec<Finding>,
    pub waived: usize,
    pub tooling: Vec<Tool>,
    pub mode: Mode,
    pub created: DateTime<Utc>,
}

/// Resolves `rev` to a full commit SHA.
pub fn commit(repo: &Path, rev: &str) -> Result<String, ReceiptError> {
    if rev.starts_with('-') {
        return Err(ReceiptError::Invalid(format!("{rev:?} is not a revision")));
    }
    git_line(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .map_err(|_| ReceiptError::Invalid(format!("{rev:?} is not a commit in {}", repo.display())))
}

/// The files changed between two commits, with their digests at `head`.
pub fn changed_files(repo: &Path, base: &str, head: &str) -> Result<Vec<FileDigest>, ReceiptError> {
    let names = git(
        repo,
        &["diff", "--name-only", "--no-renames", "-z", base, head],
    )?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let path = String::from_utf8_lossy(name).into_owned();
        match git(repo, &["cat-file", "blob", &format!("{head}:{path}")]) {
            Ok(bytes) => out.push(FileDigest {
                digest: format!("sha256:{}", sha256_hex(&bytes)),
                bytes: bytes.len() as u64,
                path,
            }),
            Err(_) => out.push(FileDigest {
                path,
                digest: "deleted".into(),
                bytes: 0,
            }),
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Writes the tree of `head` into `dir` (a fresh directory), so the gate
/// judges exactly the committed head, not the working tree.
pub fn export_tree(repo: &Path, head: &str, dir: &Path) -> Result<(), ReceiptError> {
    let files = git(repo, &["ls-tree", "-r", "-z", "--name-only", head])?;
    for name in files.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let path = String::from_utf8_lossy(name).into_owned();
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(ReceiptError::Invalid(format!(
                "refusing path {path:?} in {head}"
            )));
        }
        let bytes = git(repo, &["cat-file", "blob", &format!("{head}:{path}")])?;
        let dest = dir.join(&path);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| ReceiptError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        std::fs::write(&dest, bytes).map_err(|e| ReceiptError::Read {
            path: dest.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Who applied a change, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub principal: String,
    /// How it was applied: `gitops/flux`, `gitops/argocd`, `tofu apply`, …
    pub method: String,
}

/// The repository state an apply came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoRef {
    pub commit: String,
    pub branch: String,
}

/// What was applied where, by whom and how (kind `kfm.infra.ApplyReceipt`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyReceipt {
    pub kind: String,
    pub env: String,
    pub repo: RepoRef,
    pub actor: Actor,
    pub tooling: Vec<Tool>,
    pub inputs: Vec<FileDigest>,
    pub outputs: Vec<FileDigest>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Who approved delivery (from `DELIVERY_APPROVED.yaml`).
    pub approved_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

/// The environments an apply can target.
pub const ENVIRONMENTS: &[&str] = &["dev", "stage", "prod"];

/// Digests of files given on the command line.
pub fn digest_files(paths: &[PathBuf]) -> Result<Vec<FileDigest>, ReceiptError> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| ReceiptError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
            Ok(FileDigest {
                path: p.display().to_string(),
                digest: format!("sha256:{}", sha256_hex(&bytes)),
                bytes: bytes.len() as u64,
            })
        })
        .collect()
}

/// The repository's current commit and branch.
pub fn repo_ref(repo: &Path) -> Result<RepoRef, ReceiptError> {
    Ok(RepoRef {
        commit: git_line(repo, &["rev-parse", "HEAD"])?,
        branch: git_line(repo, &["rev-parse", "--abbrev-ref", "HEAD"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(text: Option<&str>) -> Mode {
        let d = tempfile::tempdir().unwrap();
        if let Some(t) = text {
            std::fs::write(d.path().join(APPROVAL_FILE), t).unwrap();
        }
        change_control(d.path(), NaiveDate::from_ymd_opt(2026, 11, 22).unwrap())
    }

    #[test]
    fn only_a_current_named_approval_is_delivery() {
        assert!(mode(Some("delivery:\n  approved: true\n  approver: dana\n  change: CHG-1\n  expires: 2026-12-01\n")).is_delivery());
        assert!(mode(Some("delivery:\n  approved: true\n  approver: dana\n")).is_delivery());
        for (text, why) in [
            (None, "does not exist"),
            (
                Some("delivery:\n  approved: false\n  approver: dana\n"),
                "approved: false",
            ),
            (Some("delivery:\n  approved: true\n"), "without naming"),
            (
                Some("delivery:\n  approved: \"yes\"\n  approver: dana\n"),
                "malformed",
            ),
            (
                Some("delivery:\n  approved: true\n  approver: dana\n  expires: 2026-11-01\n"),
                "expired",
            ),
            (
                Some("delivery:\n  approved: true\n  approver: dana\n  expires: soon\n"),
                "not a date",
            ),
            (
                Some("delivery:\n  approved: true\n  approver: dana\n  scope: all\n"),
                "malformed",
            ),
            (Some(": : :\n"), "malformed"),
        ] {
            match mode(text) {
                Mode::Analysis { reason } => {
                    assert!(reason.contains(why), "{reason} should say {why}")
                }
                m => panic!("{text:?} gave {m:?}"),
            }
        }
    }
}
