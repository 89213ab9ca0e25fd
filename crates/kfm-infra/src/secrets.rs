//! Secrets in any text file: built-in rules (private keys, cloud and SaaS
//! tokens, passwords in URLs, high-entropy assignments) and gitleaks-format
//! rule files, with a keyword prefilter so that the regexes run only on
//! lines that could match.
//!
//! The scanner never returns a secret: snippets are masked before they leave
//! this module.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use crate::finding::Rule;

/// A secret rule: a regex, the keywords that must appear on a line before
/// the regex is tried, and an optional entropy floor for the secret part.
#[derive(Debug, Clone)]
pub struct SecretRule {
    pub rule: Rule,
    pub regex: Regex,
    /// Lower-case; a line must contain one (case-insensitively). Empty: the
    /// rule runs on every line.
    pub keywords: Vec<String>,
    /// Capture group holding the secret (0 = the whole match).
    pub secret_group: usize,
    /// Minimum Shannon entropy (bits per character) of the secret.
    pub entropy: Option<f64>,
}

/// Why a rule file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}: not a gitleaks rule file: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: rule {id}: invalid regex: {reason}")]
    Regex {
        file: String,
        id: String,
        reason: String,
    },
}

fn rule(id: &str, title: &str, hint: &str, pattern: &str) -> Rule {
    Rule {
        id: id.into(),
        title: title.into(),
        hint: hint.into(),
        pattern: Some(pattern.into()),
    }
}

fn built_in(
    id: &str,
    title: &str,
    hint: &str,
    re: &str,
    keywords: &[&str],
    secret_group: usize,
    entropy: Option<f64>,
) -> SecretRule {
    SecretRule {
        rule: rule(id, title, hint, re),
        // The patterns are constants, tested below: a bad one is a bug
        // caught by `cargo test`, never a user's input.
        regex: Regex::new(re).unwrap_or_else(|e| panic!("built-in rule {id}: {e}")),
        keywords: keywords.iter().map(|k| k.to_lowercase()).collect(),
        secret_group,
        entropy,
    }
}

/// The built-in rules.
pub fn built_in_rules() -> Vec<SecretRule> {
    const ROTATE: &str = "remove it from the file and its history, rotate it, and load it at run time (env:/file: reference, SealedSecret, ExternalSecret or SOPS)";
    vec![
        built_in(
            "KFM-SEC-001",
            "private key",
            ROTATE,
            r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----",
            &["private key"],
            0,
            None,
        ),
        built_in(
            "KFM-SEC-002",
            "AWS access key id",
            ROTATE,
            r"\b((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b",
            &["akia", "asia", "abia", "acca"],
            1,
            None,
        ),
        built_in(
            "KFM-SEC-003",
            "AWS secret access key",
            ROTATE,
            r#"(?i)aws_?secret_?access_?key\s*[:=]\s*["']?([A-Za-z0-9/+=]{40})\b"#,
            &["secret"],
            1,
            Some(3.0),
        ),
        built_in(
            "KFM-SEC-004",
            "GitHub token",
            ROTATE,
            r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b",
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            1,
            None,
        ),
        built_in(
            "KFM-SEC-005",
            "Slack token",
            ROTATE,
            r"\b(xox[baprs]-[A-Za-z0-9-]{10,})\b",
            &["xox"],
            1,
            None,
        ),
        built_in(
            "KFM-SEC-006",
            "Google API key",
            ROTATE,
            r"\b(AIza[0-9A-Za-z_-]{35})\b",
            &["aiza"],
            1,
            None,
        ),
        built_in(
            "KFM-SEC-007",
            "password in a URL",
            "take the credentials out of the URL; pass them by reference (env:/file:) or a secret manager",
            // scheme://user:password@host — not a ${PLACEHOLDER} or <placeholder>.
            r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s/:@]{1,64}:([^\s/@$<{]{3,128})@[^\s/]",
            &["://"],
            1,
            None,
        ),
        built_in(
            "KFM-SEC-008",
            "secret assigned in plain text",
            ROTATE,
            r#"(?i)\b(?:password|passwd|pwd|secret|api_?key|access_?token|auth_?token|client_?secret)\b["']?\s*[:=]\s*["']?([A-Za-z0-9+/=_\-.!@#%^&*]{12,})"#,
            &["pass", "pwd", "secret", "key", "token"],
            1,
            Some(3.5),
        ),
    ]
}

/// Shannon entropy of `s` in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes() {
        counts[b as usize] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Reads gitleaks-format rules (`[[rules]]` with `id`, `regex`, optional
/// `keywords`, `entropy`, `secretGroup`, `description`).
pub fn gitleaks_rules(text: &str, file: &str) -> Result<Vec<SecretRule>, RulesError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        rules: Vec<GlRule>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct GlRule {
        id: String,
        #[serde(default)]
        description: Option<String>,
        regex: Option<String>,
        #[serde(default)]
        keywords: Vec<String>,
        #[serde(default)]
        entropy: Option<f64>,
        #[serde(default)]
        secret_group: Option<usize>,
    }
    let parsed: File = toml::from_str(text).map_err(|e| RulesError::Parse {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for r in parsed.rules {
        let Some(re) = r.regex else {
            return Err(RulesError::Parse {
                file: file.to_owned(),
                reason: format!(
                    "rule {} has no regex (path-only rules are not supported)",
                    r.id
                ),
            });
        };
        let regex = Regex::new(&re).map_err(|e| RulesError::Regex {
            file: file.to_owned(),
            id: r.id.clone(),
            reason: e.to_string(),
        })?;
        let group = r
            .secret_group
            .unwrap_or(if regex.captures_len() > 1 { 1 } else { 0 });
        out.push(SecretRule {
            rule: rule(
                &format!("GITLEAKS-{}", r.id),
                r.description.as_deref().unwrap_or(&r.id),
                "remove the secret, rotate it, and load it at run time by reference",
                &re,
            ),
            regex,
            keywords: r.keywords.iter().map(|k| k.to_lowercase()).collect(),
            secret_group: group,
            entropy: r.entropy,
        });
    }
    Ok(out)
}

/// A secret found in a text: where, which rule, and the line masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub line: u32,
    pub column: u32,
    pub masked_line: String,
}

/// Scans text with a prepared rule set.
pub struct Scanner {
    rules: Vec<SecretRule>,
    prefilter: AhoCorasick,
    /// For each prefilter pattern: the rules it enables.
    pattern_rules: Vec<Vec<usize>>,
    /// Rules without keywords (run on every line).
    always: Vec<usize>,
}

impl Scanner {
    pub fn new(rules: Vec<SecretRule>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_rules: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if r.keywords.is_empty() {
                always.push(i);
            }
            for k in &r.keywords {
                match patterns.iter().position(|p| p == k) {
                    Some(p) => pattern_rules[p].push(i),
                    None => {
                        patterns.push(k.clone());
                        pattern_rules.push(vec![i]);
                    }
                }
            }
        }
        let prefilter = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .unwrap_or_else(|e| panic!("keyword automaton: {e}"));
        Self {
            rules,
            prefilter,
            pattern_rules,
            always,
        }
    }

    pub fn rules(&self) -> &[SecretRule] {
        &self.rules
    }

    /// Every secret in `text`, in order of position.
    pub fn scan(&self, text: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        // Which lines need which rules: one pass of the automaton over the
        // whole text, then the regexes on those lines only.
        let mut wanted: Vec<(usize, usize)> = Vec::new(); // (line start, rule)
        let line_start = |pos: usize| text[..pos].rfind('\n').map_or(0, |i| i + 1);
        for m in self.prefilter.find_overlapping_iter(text) {
            let start = line_start(m.start());
            for &r in &self.pattern_rules[m.pattern().as_usize()] {
                wanted.push((start, r));
            }
        }
        if !self.always.is_empty() {
            let mut start = 0;
            for line in text.split_inclusive('\n') {
                for &r in &self.always {
                    wanted.push((start, r));
                }
                start += line.len();
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        // Line numbers counted incrementally: `wanted` is in text order.
        let mut counted = (0usize, 1u32);
        for (start, r) in wanted {
            let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let line = &text[start..end];
            let rule = &self.rules[r];
            for caps in rule.regex.captures_iter(line) {
                let Some(secret) = caps.get(rule.secret_group).or_else(|| caps.get(0)) else {
                    continue;
                };
                if rule
                    .entropy
                    .is_some_and(|min| entropy(secret.as_str()) < min)
                {
                    continue;
                }
                let line_no = line_number(text, start, &mut counted);
                let column = line[..secret.start()].chars().count() as u32 + 1;
                hits.push(Hit {
                    rule: r,
                    line: line_no,
                    column,
                    masked_line: mask(line, secret.start(), secret.end()),
                });
            }
        }
        hits.sort_by_key(|h| (h.line, h.column, h.rule));
        hits
    }
}

/// The 1-based line of byte `pos`, counting on from the last position
/// asked (`pos` never decreases between calls).
fn line_number(text: &str, pos: usize, counted: &mut (usize, u32)) -> u32 {
    let (from, line) = *counted;
    let more = text.as_bytes()[from..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u32;
    *counted = (pos, line + more);
    line + more
}

/// The line with `start..end` replaced by a marker keeping only the first
/// characters' shape (no secret byte survives beyond four characters).
fn mask(line: &str, start: usize, end: usize) -> String {
    let secret = &line[start..end];
    let keep: String = secret.chars().take(4).collect();
    let shown = format!("{keep}…[{} chars masked]", secret.chars().count());
    let mut out = String::with_capacity(line.len());
    out.push_str(&line[..start]);
    out.push_str(&shown);
    out.push_str(&line[end..]);
    if out.chars().count() > 300 {
        out = out.chars().take(300).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<String> {
        let s = Scanner::new(built_in_rules());
        s.scan(text)
            .into_iter()
            .map(|h| s.rules()[h.rule].rule.id.clone())
            .collect()
    }

    #[test]
    fn each_built_in_rule_has_a_violating_and_a_compliant_case() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "KFM-SEC-001",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n",
                "-----BEGIN PUBLIC KEY-----\n",
            ),
            (
                "KFM-SEC-002",
                "key: AKIAQYLPMN5HHHFPZAM2\n",
                "key: AKIA_EXAMPLE\n",
            ),
            (
                "KFM-SEC-003",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
                "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}\n",
            ),
            (
                "KFM-SEC-004",
                "token: ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\n",
                "token: ghp_short\n",
            ),
            (
                "KFM-SEC-005",
                "hook: xoxb-123456789012-abcdefghij\n",
                "xox is a word\n",
            ),
            (
                "KFM-SEC-006",
                "key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW\n",
                "AIza is a prefix\n",
            ),
            (
                "KFM-SEC-007",
                "url: postgres://kfm:s3cr3t-pw@db.internal:5432/kfm\n",
                "url: postgres://kfm:${DB_PASSWORD}@db.internal:5432/kfm\n",
            ),
            (
                "KFM-SEC-008",
                "password: \"Zq8#vR2!pL9xW4tK\"\n",
                "password: changeme\n",
            ),
        ];
        for (id, bad, good) in cases {
            assert!(ids(bad).contains(&id.to_string()), "{id} missed: {bad}");
            assert!(
                !ids(good).contains(&id.to_string()),
                "{id} false positive: {good}"
            );
        }
    }

    #[test]
    fn snippets_never_carry_the_secret() {
        let s = Scanner::new(built_in_rules());
        let text = "x\n  url: https://admin:hunter2-very-long@example.org/\n";
        let h = &s.scan(text)[0];
        assert_eq!((h.line, h.column), (2, 22));
        assert!(
            !h.masked_line.contains("hunter2-very-long"),
            "{}",
            h.masked_line
        );
        assert!(
            h.masked_line.contains("[17 chars masked]"),
            "{}",
            h.masked_line
        );
    }

    #[test]
    fn gitleaks_rules_load_and_bad_ones_are_refused() {
        let t = r#"
[[rules]]
id = "kfm-internal-token"
description = "KFM internal token"
regex = '''kfm_tok_([a-z0-9]{24})'''
keywords = ["kfm_tok_"]
"#;
        let rules = gitleaks_rules(t, "g.toml").unwrap();
        let s = Scanner::new(rules);
        assert_eq!(s.scan("a kfm_tok_abcdefghijklmnopqrstuvwx b").len(), 1);
        assert!(gitleaks_rules("[[rules]]\nid = 'x'\nregex = '('\n", "g.toml").is_err());
        assert!(gitleaks_rules("rules = 3", "g.toml").is_err());
    }

    #[test]
    fn entropy_is_shannon() {
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }
}
