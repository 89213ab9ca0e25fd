//! Who is asking: API tokens (opaque, stored only as hashes) and the
//! anonymous `public` role.
//!
//! A token is `kfm_` + 43 characters of base64url (32 random bytes). The
//! token file holds, per token, its sha256 and what it grants; the token
//! itself is printed once at creation and never stored, so a leaked token
//! file grants nothing. The server re-reads the file whenever it changes,
//! so `kfm token revoke` takes effect on the next request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Roles the default policy knows. A token for any other role would be
/// denied everything; refusing it at creation names the mistake early.
pub const ROLES: [&str; 6] = [
    "public",
    "researcher",
    "steward",
    "auditor",
    "engineer",
    "admin",
];

const TOKEN_PREFIX: &str = "kfm_";

/// The caller of one request, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Token id (never the token), JWT subject, or `anonymous`.
    pub id: String,
    pub roles: Vec<String>,
    /// Datasets this caller holds approved access to.
    pub approved_access: Vec<String>,
    /// `anonymous`, `token` or `jwt`.
    pub method: &'static str,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            roles: vec!["public".into()],
            approved_access: Vec::new(),
            method: "anonymous",
        }
    }
}

/// One token as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub approved_access: Vec<String>,
    /// sha256 of the token, lowercase hex.
    pub sha256: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("unknown role {0:?}: use one of public, researcher, steward, auditor, engineer, admin")]
    UnknownRole(String),
    #[error("no token with id {0:?} (`kfm token list` shows them)")]
    NoSuchToken(String),
    #[error("the system random source failed: {0}")]
    Random(String),
    #[error("invalid name {0:?}: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> TokenError {
    TokenError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn read_file(path: &Path) -> Result<TokenFile, TokenError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            file_err(
                path,
                format!(
                    "line {}: {e} (the file is written by `kfm token`; restore it or remove it)",
                    e.line()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(file_err(path, e.to_string())),
    }
}

/// Writes the whole file to a sibling and renames it over the old one, so a
/// crash leaves either the old or the new file, never half of one.
fn write_file(path: &Path, f: &TokenFile) -> Result<(), TokenError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(f).map_err(|e| file_err(path, e.to_string()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut out = opts.open(&tmp).map_err(|e| file_err(&tmp, e.to_string()))?;
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|e| file_err(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e.to_string()))
}

/// Creates a token; returns the token (shown once) and its record.
pub fn create(
    path: &Path,
    name: &str,
    role: &str,
    approved_access: &[String],
) -> Result<(String, TokenRecord), TokenError> {
    if !ROLES.contains(&role) {
        return Err(TokenError::UnknownRole(role.to_owned()));
    }
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(TokenError::BadName(name.to_owned()));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let mut idb = [0u8; 6];
    getrandom::fill(&mut idb).map_err(|e| TokenError::Random(e.to_string()))?;
    let mut file = read_file(path)?;
    let rec = TokenRecord {
        id: format!("tok_{}", hex::encode(idb)),
        name: name.to_owned(),
        role: role.to_owned(),
        approved_access: approved_access.to_vec(),
        sha256: sha256_hex(&token),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        revoked_at: None,
    };
    file.tokens.push(rec.clone());
    write_file(path, &file)?;
    Ok((token, rec))
}

/// Every token record, revoked ones included.
pub fn list(path: &Path) -> Result<Vec<TokenRecord>, TokenError> {
    Ok(read_file(path)?.tokens)
}

/// Marks a token revoked (the record stays, for the audit trail).
pub fn revoke(path: &Path, id: &str) -> Result<TokenRecord, TokenError> {
    let mut file = read_file(path)?;
    let rec = file
        .tokens
        .iter_mut()
        .find(|t| t.id == id)
        .ok_or_else(|| TokenError::NoSuchToken(id.to_owned()))?;
    if rec.revoked_at.is_none() {
        rec.revoked_at =
            Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let out = rec.clone();
    write_file(path, &file)?;
    Ok(out)
}

/// Why a request's credentials were refused. The message goes to the
/// client, so it never echoes the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub &'static str);

/// Live view of the token file for the server.
pub struct Tokens {
    path: PathBuf,
    cache: RwLock<Cache>,
}

#[derive(Default)]
struct Cache {
    modified: Option<SystemTime>,
    len: u64,
    by_hash: HashMap<String, Principal>,
    error: Option<String>,
}

impl Tokens {
    pub fn new(path: PathBuf) -> Self {
        let t = Self {
            path,
            cache: RwLock::new(Cache::default()),
        };
        t.refresh();
        t
    }

    /// Re-reads the file if its modification time or size changed.
    fn refresh(&self) {
        let meta = std::fs::metadata(&self.path).ok();
        let modified = meta.as_ref().and_then(|m| m.modified().ok());
        let len = meta.as_ref().map_or(0, |m| m.len());
        if let Ok(c) = self.cache.read()
            && c.modified == modified
            && c.len == len
            && (modified.is_some() || c.by_hash.is_empty())
        {
            return;
        }
        let mut next = Cache {
            modified,
            len,
            ..Cache::default()
        };
        match read_file(&self.path) {
            Ok(f) => {
                for t in f.tokens.into_iter().filter(|t| t.revoked_at.is_none()) {
                    next.by_hash.insert(
                        t.sha256,
                        Principal {
                            id: t.id,
                            roles: vec![t.role],
                            approved_access: t.approved_access,
                            method: "token",
                        },
                    );
                }
            }
            // Fail closed: a broken token file authenticates nobody.
            Err(e) => next.error = Some(e.to_string()),
        }
        if let Some(e) = &next.error {
            tracing::error!(error = %e, "token file unreadable: every token is refused");
        }
        if let Ok(mut c) = self.cache.write() {
            *c = next;
        }
    }

    /// The principal for a bearer token.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() != TOKEN_PREFIX.len() + 43 {
            return Err(AuthError("malformed bearer token"));
        }
        self.refresh();
        let h = sha256_hex(token);
        let c = self
            .cache
            .read()
            .map_err(|_| AuthError("token store unavailable"))?;
        c.by_hash
            .get(&h)
            .cloned()
            .ok_or(AuthError("unknown or revoked token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.json");
        let (tok, rec) = create(&p, "alice", "researcher", &["ks-sites".into()]).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains(&tok));
        let tokens = Tokens::new(p.clone());
        let who = tokens.authenticate(&tok).unwrap();
        assert_eq!(who.roles, vec!["researcher"]);
        assert_eq!(who.approved_access, vec!["ks-sites"]);
        assert_eq!(who.id, rec.id);
        revoke(&p, &rec.id).unwrap();
        assert!(tokens.authenticate(&tok).is_err());
        let mut wrong = tok.clone();
        wrong.pop();
        wrong.push('A');
        assert!(tokens.authenticate(&wrong).is_err());
    }

    #[test]
    fn refuses_unknown_roles_and_broken_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.json");
        assert!(matches!(
            create(&p, "x", "superuser", &[]),
            Err(TokenError::UnknownRole(_))
        ));
        let (tok, _) = create(&p, "x", "auditor", &[]).unwrap();
        std::fs::write(&p, b"{ not json").unwrap();
        let tokens = Tokens::new(p);
        assert!(tokens.authenticate(&tok).is_err());
    }
}
