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

/// Live view of the token file for the server, and the optional OIDC/JWT
/// verifier.
pub struct Tokens {
    path: PathBuf,
    cache: RwLock<Cache>,
    jwt: Option<JwtVerifier>,
}

/// Where JWT bearer tokens come from: the identity provider's JWKS (a local
/// file; deployments sync it from the provider's `jwks_uri`), and the
/// issuer and audience every token must name.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub jwks: PathBuf,
    pub issuer: String,
    pub audience: String,
}

/// Validates OIDC/JWT bearer tokens against a JWKS: asymmetric keys only
/// (RSA, EC P-256/P-384, Ed25519), the algorithm fixed by the key (never
/// by the token), `exp`, `iss`, `aud` and `sub` required. Roles come from
/// the `roles` claim, approved datasets from `approved_access`.
pub struct JwtVerifier {
    keys: Vec<(
        Option<String>,
        jsonwebtoken::DecodingKey,
        jsonwebtoken::Algorithm,
    )>,
    issuer: String,
    audience: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    approved_access: Vec<String>,
}

impl JwtVerifier {
    /// Reads and checks the JWKS; a key this verifier cannot use safely
    /// (symmetric, unknown curve, no usable algorithm) is an error naming it.
    pub fn load(cfg: &JwtConfig) -> Result<Self, TokenError> {
        use jsonwebtoken::Algorithm as A;
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
        let bytes = std::fs::read(&cfg.jwks).map_err(|e| file_err(&cfg.jwks, e.to_string()))?;
        let set: JwkSet = serde_json::from_slice(&bytes)
            .map_err(|e| file_err(&cfg.jwks, format!("not a JWKS: {e}")))?;
        if set.keys.is_empty() {
            return Err(file_err(&cfg.jwks, "the JWKS holds no key"));
        }
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk
                .common
                .key_id
                .clone()
                .unwrap_or_else(|| format!("key {i}"));
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => A::RS256,
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => A::ES256,
                    EllipticCurve::P384 => A::ES384,
                    _ => return Err(file_err(&cfg.jwks, format!("{name}: unsupported curve"))),
                },
                AlgorithmParameters::OctetKeyPair(_) => A::EdDSA,
                AlgorithmParameters::OctetKey(_) => {
                    return Err(file_err(
                        &cfg.jwks,
                        format!(
                            "{name}: symmetric keys are refused (anyone holding the JWKS could mint tokens)"
                        ),
                    ));
                }
                _ => return Err(file_err(&cfg.jwks, format!("{name}: unsupported key type"))),
            };
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
                .map_err(|e| file_err(&cfg.jwks, format!("{name}: {e}")))?;
            keys.push((jwk.common.key_id.clone(), key, alg));
        }
        Ok(Self {
            keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError("malformed bearer token"))?;
        let key = self
            .keys
            .iter()
            .find(|(kid, _, alg)| {
                *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
            .ok_or(AuthError("no key in the JWKS matches this token"))?;
        let mut v = jsonwebtoken::Validation::new(key.2);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 30;
        let data = jsonwebtoken::decode::<Claims>(token, &key.1, &v)
            .map_err(|_| AuthError("invalid, expired or foreign token"))?;
        let c = data.claims;
        Ok(Principal {
            id: format!("jwt:{}", c.sub.chars().take(128).collect::<String>()),
            roles: if c.roles.is_empty() {
                vec!["public".into()]
            } else {
                c.roles
            },
            approved_access: c.approved_access,
            method: "jwt",
        })
    }
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
            jwt: None,
        };
        t.refresh();
        t
    }

    /// Also accepts JWT bearer tokens this verifier validates.
    pub fn with_jwt(mut self, jwt: JwtVerifier) -> Self {
        self.jwt = Some(jwt);
        self
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
        if let Some(jwt) = &self.jwt
            && !token.starts_with(TOKEN_PREFIX)
            && token.bytes().filter(|&b| b == b'.').count() == 2
        {
            return jwt.authenticate(token);
        }
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

    /// An Ed25519 identity provider: PKCS#8 DER for signing, a JWKS for the server.
    fn idp(seed: u8, kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
        use base64::Engine;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&[seed; 32]);
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
        (
            jsonwebtoken::EncodingKey::from_ed_der(&der),
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}]}),
        )
    }

    fn mint(key: &jsonwebtoken::EncodingKey, kid: &str, claims: serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    }

    #[test]
    fn jwt_bearer_tokens_are_validated_against_the_jwks() {
        let d = tempfile::tempdir().unwrap();
        let (key, jwks) = idp(7, "k1");
        let path = d.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let cfg = JwtConfig {
            jwks: path,
            issuer: "https://idp.example".into(),
            audience: "kfm".into(),
        };
        let tokens =
            Tokens::new(d.path().join("tokens.json")).with_jwt(JwtVerifier::load(&cfg).unwrap());
        let exp = chrono::Utc::now().timestamp() + 600;
        let good = serde_json::json!({"sub": "alice", "iss": "https://idp.example", "aud": "kfm", "exp": exp,
            "roles": ["researcher"], "approved_access": ["ks-sites-synthetic"]});
        let who = tokens
            .authenticate(&mint(&key, "k1", good.clone()))
            .unwrap();
        assert_eq!(
            (who.id.as_str(), who.roles.clone(), who.method),
            ("jwt:alice", vec!["researcher".to_string()], "jwt")
        );
        assert_eq!(who.approved_access, vec!["ks-sites-synthetic"]);
        // Everything that must fail: foreign issuer or audience, expired,
        // missing sub, another key, an unknown kid, a tampered payload.
        let mut bad = Vec::new();
        for (k, v) in [
            ("iss", serde_json::json!("https://evil.example")),
            ("aud", serde_json::json!("other")),
            ("exp", serde_json::json!(exp - 3600)),
        ] {
            let mut c = good.clone();
            c[k] = v;
            bad.push(mint(&key, "k1", c));
        }
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("sub");
        bad.push(mint(&key, "k1", c));
        let (other, _) = idp(8, "k1");
        bad.push(mint(&other, "k1", good.clone()));
        bad.push(mint(&key, "k2", good.clone()));
        let t = mint(&key, "k1", good);
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let flip = if parts[1].starts_with('e') { "f" } else { "e" };
        parts[1].replace_range(0..1, flip);
        bad.push(parts.join("."));
        // alg "none" and HS256 are never accepted.
        bad.push(format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                br#"{"alg":"none","kid":"k1"}"#
            ),
            parts[1]
        ));
        let hs = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "x", "iss": "https://idp.example", "aud": "kfm", "exp": exp, "roles": ["admin"]}),
            &jsonwebtoken::EncodingKey::from_secret(b"guess")).unwrap();
        bad.push(hs);
        for b in &bad {
            assert!(tokens.authenticate(b).is_err(), "accepted {b}");
        }
        // A JWKS with a symmetric key is refused at load.
        std::fs::write(
            &cfg.jwks,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#,
        )
        .unwrap();
        assert!(JwtVerifier::load(&cfg).is_err());
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
