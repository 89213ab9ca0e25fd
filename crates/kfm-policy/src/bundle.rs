//! Policy bundles: the files, their manifest, their digest and signature.
//!
//! A bundle is a directory. Its identity is a digest over *every* file in
//! it (the signature file excepted), so "the same bundle" means the same
//! bytes everywhere: CI, a laptop, the runtime. Line endings are not
//! normalised (the repository's `.gitattributes` keeps `policy/` binary-safe)
//! because normalising would make two different byte streams share an id.
//!
//! The digest is `sha256` over the lines `<sha256 hex of content>  <path>\n`
//! sorted by path (byte order, `/`-separated, relative to the bundle root):
//! exactly what `find . -type f ! -name .signature.json | sed 's|^\./||' |
//! LC_ALL=C sort | xargs sha256sum | sha256sum` prints, so an auditor can
//! recompute it without KFM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use kfm_core::{Digest, Hasher};
use serde::{Deserialize, Serialize};

/// The file that carries a bundle's signature; it is not part of the digest
/// (it signs the digest).
pub const SIGNATURE_FILE: &str = ".signature.json";
/// The bundle manifest (revision and roots), as in OPA bundles.
pub const MANIFEST_FILE: &str = ".manifest";
/// Bundles larger than this are refused: a policy bundle is code and small
/// data, and an unbounded read is a denial-of-service door.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a bundle cannot be used. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read policy bundle {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{path}: bad manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("{path}: Rego does not parse: {reason}")]
    Rego { path: PathBuf, reason: String },
    #[error("{path}: signature check failed: {reason}")]
    Signature { path: PathBuf, reason: String },
}

impl BundleError {
    /// A one-line hint on how to fix the problem, for the CLI edge.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Io { .. } => {
                "check that policy.bundle in kfm.toml points at a readable directory"
            }
            Self::Refused { .. } => {
                "a bundle holds regular files only: *.rego, data.json/data.yaml, .manifest, tests"
            }
            Self::Manifest { .. } => {
                "write .manifest as JSON: {\"revision\": \"…\", \"roots\": [\"kfm\"]} with non-overlapping roots"
            }
            Self::Data { .. } => {
                "data files hold one object each, under a manifest root, and may not redefine a key another data file sets"
            }
            Self::Rego { .. } => "fix the Rego (v1 syntax) at the position shown",
            Self::Signature { .. } => {
                "the bundle changed after it was signed: re-sign it with `kfm policy sign`, or restore the signed files"
            }
        }
    }
}

/// The `.manifest` file: which revision this is and which data paths the
/// bundle owns. Unknown keys are refused (a typo must not silently widen a
/// bundle's scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub revision: String,
    pub roots: Vec<String>,
}

/// The `.signature.json` file: an ed25519 signature over the digest string
/// (`sha256:<hex>`), with the signer's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    pub algorithm: String,
    /// Base64 of the 32-byte ed25519 public key.
    pub public_key: String,
    /// Base64 of the 64-byte signature over the digest string.
    pub signature: String,
}

/// A loaded, checked bundle. Holding one means: every file was read, the
/// manifest is valid, every package and data path sits under a root, data
/// files merge without conflict, and a present signature verified.
#[derive(Debug, Clone)]
pub struct Bundle {
    source: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
    digest: Digest,
    manifest: Manifest,
    data: serde_json::Value,
    signer: Option<String>,
}

/// One Rego module of a bundle.
#[derive(Debug, Clone)]
pub struct Module<'a> {
    pub path: &'a str,
    pub source: &'a str,
}

impl Bundle {
    /// Reads and checks the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let mut files = BTreeMap::new();
        let mut total = 0u64;
        collect(dir, dir, &mut files, &mut total)?;
        Self::from_files(dir.to_path_buf(), files)
    }

    /// Checks a bundle given as (relative path → bytes); `source` is only
    /// used to name files in errors. Used for bundles embedded in the binary.
    pub fn from_files(
        source: PathBuf,
        mut files: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, BundleError> {
        let at = |rel: &str| source.join(rel);
        let signature = files.remove(SIGNATURE_FILE);
        let digest = digest_of(&files);

        let manifest_bytes = files
            .get(MANIFEST_FILE)
            .ok_or_else(|| BundleError::Manifest {
                path: at(MANIFEST_FILE),
                reason: "missing (every bundle names its revision and roots)".into(),
            })?;
        let manifest = parse_manifest(manifest_bytes).map_err(|reason| BundleError::Manifest {
            path: at(MANIFEST_FILE),
            reason,
        })?;

        let signer = match signature {
            Some(bytes) => Some(verify_signature(&bytes, &digest).map_err(|reason| {
                BundleError::Signature {
                    path: at(SIGNATURE_FILE),
                    reason,
                }
            })?),
            None => None,
        };

        let mut data = serde_json::Value::Object(serde_json::Map::new());
        for (rel, bytes) in &files {
            let Some(kind) = data_kind(rel) else { continue };
            let value = parse_data(bytes, kind).map_err(|reason| BundleError::Data {
                path: at(rel),
                reason,
            })?;
            let dir: Vec<&str> = match rel.rsplit_once('/') {
                Some((d, _)) => d.split('/').collect(),
                None => Vec::new(),
            };
            let serde_json::Value::Object(map) = value else {
                return Err(BundleError::Data {
                    path: at(rel),
                    reason: "a data file must hold one object at its top level".into(),
                });
            };
            for key in map.keys() {
                let mut path: Vec<&str> = dir.clone();
                path.push(key);
                if !under_roots(&manifest.roots, &path) {
                    return Err(BundleError::Data {
                        path: at(rel),
                        reason: format!(
                            "data path `{}` is outside the manifest roots {:?}",
                            path.join("/"),
                            manifest.roots
                        ),
                    });
                }
            }
            merge_at(
                &mut data,
                &dir,
                serde_json::Value::Object(map),
                &mut Vec::new(),
            )
            .map_err(|key| BundleError::Data {
                path: at(rel),
                reason: format!("`{key}` is already set by another data file"),
            })?;
        }

        for module in rego_modules(&files) {
            std::str::from_utf8(files[module].as_slice()).map_err(|_| BundleError::Rego {
                path: at(module),
                reason: "not UTF-8".into(),
            })?;
        }

        Ok(Self {
            source,
            files,
            digest,
            manifest,
            data,
            signer,
        })
    }

    /// The content digest that environments pin.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn revision(&self) -> &str {
        &self.manifest.revision
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Where the bundle was loaded from (for messages).
    pub fn source(&self) -> &Path {
        &self.source
    }
    /// The merged data document.
    pub fn data(&self) -> &serde_json::Value {
        &self.data
    }
    /// Base64 public key of the signer when the bundle is signed (and the
    /// signature verified: an unverified bundle never loads).
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }
    /// Every file (signature excepted), by relative path.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// The Rego modules, in path order.
    pub fn modules(&self) -> impl Iterator<Item = Module<'_>> {
        rego_modules(&self.files).map(|p| Module {
            path: p,
            // Checked to be UTF-8 in from_files.
            source: std::str::from_utf8(&self.files[p]).unwrap_or_default(),
        })
    }

    /// Path used in messages for a file of this bundle.
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.source.join(rel)
    }

    /// Checks a package path (`data.kfm.authz`) against the manifest roots.
    pub fn check_package(&self, module: &str, package: &str) -> Result<(), BundleError> {
        let segs: Vec<&str> = package.trim_start_matches("data.").split('.').collect();
        if under_roots(&self.manifest.roots, &segs) {
            Ok(())
        } else {
            Err(BundleError::Manifest {
                path: self.path_of(module),
                reason: format!(
                    "package `{}` is outside the manifest roots {:?}",
                    package.trim_start_matches("data."),
                    self.manifest.roots
                ),
            })
        }
    }
}

/// sha256 over the sorted `<hex>  <path>\n` lines (see the module docs).
pub fn digest_of(files: &BTreeMap<String, Vec<u8>>) -> Digest {
    let mut outer = Hasher::new();
    for (path, bytes) in files {
        let line = format!("{}  {path}\n", Digest::of(bytes).hex());
        outer.update(line.as_bytes());
    }
    outer.finish()
}

/// Signs the bundle in `dir` (writing `.signature.json`). The signature is
/// over the digest, so it covers every file of the bundle.
pub fn sign(dir: &Path, key: &SigningKey) -> Result<Digest, BundleError> {
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files, &mut 0)?;
    files.remove(SIGNATURE_FILE);
    let digest = digest_of(&files);
    let sig = key.sign(digest.to_string().as_bytes());
    let doc = BundleSignature {
        algorithm: "ed25519".into(),
        public_key: B64.encode(key.verifying_key().as_bytes()),
        signature: B64.encode(sig.to_bytes()),
    };
    let path = dir.join(SIGNATURE_FILE);
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| BundleError::Manifest {
        path: path.clone(),
        reason: format!("the signature could not be encoded: {e}"),
    })?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| BundleError::Io { path, source })?;
    Ok(digest)
}

/// Parses a signing key file's content: base64 of a 32-byte ed25519 seed.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "an ed25519 seed is 32 bytes".to_string())?;
    Ok(SigningKey::from_bytes(&seed))
}

fn verify_signature(bytes: &[u8], digest: &Digest) -> Result<String, String> {
    let doc: BundleSignature =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed: {e}"))?;
    if doc.algorithm != "ed25519" {
        return Err(format!(
            "algorithm `{}` is not supported (ed25519 only)",
            doc.algorithm
        ));
    }
    let key: [u8; 32] = B64
        .decode(&doc.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("public_key is not base64 of 32 bytes")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| format!("public_key: {e}"))?;
    let sig: [u8; 64] = B64
        .decode(&doc.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("signature is not base64 of 64 bytes")?;
    key.verify(digest.to_string().as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| format!("the signature does not match the bundle digest {digest}"))?;
    Ok(doc.public_key)
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if m.revision.trim().is_empty() {
        return Err("`revision` is empty".into());
    }
    if m.roots.is_empty() {
        return Err("`roots` is empty: name the data paths this bundle owns".into());
    }
    for r in &m.roots {
        if r.is_empty() || r.split('/').any(str::is_empty) {
            return Err(format!("root `{r}` is not a `/`-separated path"));
        }
    }
    for (i, a) in m.roots.iter().enumerate() {
        for b in &m.roots[i + 1..] {
            let (sa, sb): (Vec<_>, Vec<_>) = (a.split('/').collect(), b.split('/').collect());
            if sa.starts_with(&sb) || sb.starts_with(&sa) {
                return Err(format!("roots `{a}` and `{b}` overlap"));
            }
        }
    }
    Ok(m)
}

fn under_roots(roots: &[String], path: &[&str]) -> bool {
    roots.iter().any(|r| {
        let r: Vec<&str> = r.split('/').collect();
        path.starts_with(&r)
    })
}

#[derive(Clone, Copy)]
enum DataKind {
    Json,
    Yaml,
}

fn data_kind(rel: &str) -> Option<DataKind> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    match name {
        "data.json" => Some(DataKind::Json),
        "data.yaml" | "data.yml" => Some(DataKind::Yaml),
        _ => None,
    }
}

fn rego_modules(files: &BTreeMap<String, Vec<u8>>) -> impl Iterator<Item = &str> {
    files
        .keys()
        .filter(|p| p.ends_with(".rego"))
        .map(String::as_str)
}

fn parse_data(bytes: &[u8], kind: DataKind) -> Result<serde_json::Value, String> {
    match kind {
        DataKind::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        DataKind::Yaml => serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// Merges `value` at `dir` into `target`; on a conflict returns the key path.
fn merge_at(
    target: &mut serde_json::Value,
    dir: &[&str],
    value: serde_json::Value,
    trail: &mut Vec<String>,
) -> Result<(), String> {
    let Some((head, rest)) = dir.split_first() else {
        return merge(target, value, trail);
    };
    trail.push((*head).to_owned());
    let serde_json::Value::Object(map) = target else {
        return Err(trail.join("/"));
    };
    let slot = map
        .entry((*head).to_owned())
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    merge_at(slot, rest, value, trail)
}

fn merge(
    target: &mut serde_json::Value,
    value: serde_json::Value,
    trail: &mut Vec<String>,
) -> Result<(), String> {
    match (target, value) {
        (serde_json::Value::Object(t), serde_json::Value::Object(v)) => {
            for (k, v) in v {
                trail.push(k.clone());
                match t.get_mut(&k) {
                    Some(existing) => merge(existing, v, trail)?,
                    None => {
                        t.insert(k, v);
                    }
                }
                trail.pop();
            }
            Ok(())
        }
        _ => Err(trail.join("/")),
    }
}

fn collect(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Vec<u8>>,
    total: &mut u64,
) -> Result<(), BundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io(&path))?;
        if ft.is_symlink() {
            return Err(BundleError::Refused {
                path,
                reason: "is a symbolic link; a bundle's content must be the files themselves"
                    .into(),
            });
        }
        if ft.is_dir() {
            collect(root, &path, out, total)?;
            continue;
        }
        if !ft.is_file() {
            return Err(BundleError::Refused {
                path,
                reason: "is not a regular file".into(),
            });
        }
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
            })
            .map(|parts| parts.join("/"))
            .ok_or_else(|| BundleError::Refused {
                path: path.clone(),
                reason: "file name is not UTF-8".into(),
            })?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        *total += bytes.len() as u64;
        if *total > MAX_BUNDLE_BYTES {
            return Err(BundleError::Refused {
                path,
                reason: format!("the bundle exceeds {MAX_BUNDLE_BYTES} bytes"),
            });
        }
        out.insert(rel, bytes);
    }
    Ok(())
}
