//! Secrets by reference: the `env:NAME` / `file:PATH` form every secret in
//! kfm.toml takes, and the check that refuses a literal one.

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;

/// A reference to a secret, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    /// The secret is in this environment variable.
    Env(String),
    /// The secret is in this file (relative paths: to the workspace).
    File(PathBuf),
}

impl SecretRef {
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(name) = s.strip_prefix("env:") {
            let ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return ok.then(|| SecretRef::Env(name.to_owned()));
        }
        s.strip_prefix("file:")
            .filter(|p| !p.is_empty())
            .map(|p| SecretRef::File(PathBuf::from(p)))
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// Key names that hold secrets in other tools' configs. Their presence in
/// kfm.toml is always a mistake worth a specific message.
const SECRET_WORDS: [&str; 9] = [
    "secret",
    "password",
    "passwd",
    "token",
    "access_key",
    "private_key",
    "credential",
    "api_key",
    "apikey",
];

pub(crate) fn check_no_literal_secrets(
    table: &toml::Table,
    prefix: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let dotted = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => check_no_literal_secrets(t, &dotted, err)?,
            toml::Value::String(s) => {
                let lower = k.to_ascii_lowercase();
                let secret_name =
                    SECRET_WORDS.iter().any(|w| lower.contains(w)) || dotted == "signing.key";
                let secret_value = s.contains("-----BEGIN") || looks_like_aws_key(s);
                if (secret_name || secret_value) && SecretRef::parse(s).is_none() {
                    let hint = if dotted.starts_with("store.") || looks_like_aws_key(s) {
                        "object-store credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); remove this key"
                    } else {
                        "replace it by a reference: env:NAME or file:PATH"
                    };
                    return Err(err(&dotted, format!("literal secret refused: {hint}")));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn looks_like_aws_key(s: &str) -> bool {
    (s.starts_with("AKIA") || s.starts_with("ASIA"))
        && s.len() == 20
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}
