//! Where a workspace runs and where its store lives: the deployment
//! environment (whose pins apply) and the store's URL, parsed and checked.
//! The values `kfm.toml` names; `config` reads them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The deployment environment whose pins (`environments/<env>.toml`) apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Dev,
    Stage,
    Prod,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Dev => "dev",
            Environment::Stage => "stage",
            Environment::Prod => "prod",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "dev" => Some(Self::Dev),
            "stage" => Some(Self::Stage),
            "prod" => Some(Self::Prod),
            _ => None,
        }
    }
}

impl std::str::FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not an environment: dev, stage or prod"))
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the canonical store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory. Relative paths are relative to the workspace.
    File(PathBuf),
    /// An S3-compatible bucket and key prefix. Endpoint, region and
    /// credentials come from the AWS environment variables.
    S3 { bucket: String, prefix: String },
}

impl StoreUrl {
    /// Parses `file://PATH` or `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// URL has no path; use for example file://store".into());
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.contains('@') || bucket.contains(':') {
                return Err("credentials in the store URL are refused; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment".into());
            }
            if rest.contains('?') || rest.contains('#') {
                return Err("query strings and fragments are not allowed in the store URL; configure S3 with AWS_* environment variables".into());
            }
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(format!(
                    "{bucket:?} is not a valid S3 bucket name (3-63 characters of a-z, 0-9, '-', '.')"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|s| s == ".." || s == ".") {
                return Err("the S3 prefix may not contain '.' or '..' segments".into());
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err(format!(
            "unsupported store URL {url:?}: use file://PATH or s3://bucket/prefix"
        ))
    }

    /// Resolves a relative `file://` path against the workspace directory.
    pub fn resolved(&self, workspace: &Path) -> StoreUrl {
        match self {
            StoreUrl::File(p) if p.is_relative() => StoreUrl::File(workspace.join(p)),
            other => other.clone(),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(p) => write!(f, "file://{}", p.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}
