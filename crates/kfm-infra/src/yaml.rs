//! Reading YAML files into documents, failing closed, and pointing at lines.
//!
//! serde's YAML value carries no positions, so findings are located by
//! walking the document's text along the path of keys and list indices the
//! rule looked at ([`locate`]). That is exact for block-style YAML (what
//! manifests, workflows and waivers are written in) and falls back to the
//! deepest enclosing key that could be found.

use crate::scan::ScanError;

/// One document of a multi-document YAML file.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The file, as `kfm infra check` prints it.
    pub file: String,
    /// 1-based line of the document's first line in the file.
    pub start: usize,
    pub text: String,
    pub value: serde_yaml_ng::Value,
}

/// One step of a path into a document.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Doc {
    /// The 1-based file line and column of `path` in this document.
    pub fn line_of(&self, path: &[Seg<'_>]) -> (u32, u32) {
        let (l, c) = locate(&self.text, path);
        ((self.start + l) as u32, c as u32 + 1)
    }

    /// The text of a line of this document, by file line number.
    pub fn snippet(&self, line: u32) -> String {
        self.text
            .lines()
            .nth((line as usize).saturating_sub(self.start))
            .unwrap_or("")
            .to_owned()
    }
}

/// Splits `text` into documents and parses each one. A document that does
/// not parse, or holds an unrendered template, stops the run: nothing is
/// reported clean that was not read.
pub fn documents(file: &str, text: &str) -> Result<Vec<Doc>, ScanError> {
    let mut raw: Vec<(usize, String)> = Vec::new();
    let mut cur = String::new();
    let mut first = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            raw.push((first, std::mem::take(&mut cur)));
            first = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    raw.push((first, cur));
    let mut out = Vec::new();
    for (start, doc) in raw {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        // `{{` (Helm/Go templates) often still parses as YAML, as a nested
        // flow mapping: look for it first. `${{ … }}` is a CI expression.
        no_template(file, start, &doc)?;
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&doc).map_err(|e| yaml_error(file, start, &e))?;
        out.push(Doc {
            file: file.to_owned(),
            start,
            text: doc,
            value,
        });
    }
    Ok(out)
}

/// Only checks that every document parses (no value tree is built: much
/// cheaper for YAML no rule reads).
pub fn validate(file: &str, text: &str) -> Result<(), ScanError> {
    let mut start = 1;
    let mut cur = String::new();
    let check = |start: usize, doc: &str| -> Result<(), ScanError> {
        no_template(file, start, doc)?;
        serde_yaml_ng::from_str::<serde::de::IgnoredAny>(doc)
            .map(|_| ())
            .map_err(|e| yaml_error(file, start, &e))
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            check(start, &cur)?;
            cur.clear();
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    check(start, &cur)
}

/// A document holding an unrendered template stops the run.
fn no_template(file: &str, start: usize, doc: &str) -> Result<(), ScanError> {
    match doc.lines().position(unrendered) {
        Some(i) => Err(ScanError::Template {
            path: file.to_owned(),
            line: start + i,
        }),
        None => Ok(()),
    }
}

/// A YAML parse error, placed in the file (documents start at `start`).
fn yaml_error(file: &str, start: usize, e: &serde_yaml_ng::Error) -> ScanError {
    let (line, column) = e
        .location()
        .map_or((start, 1), |l| (start + l.line() - 1, l.column()));
    ScanError::Yaml {
        path: file.to_owned(),
        line,
        column,
        reason: e.to_string(),
    }
}

/// A line holding a template action `{{` that is not a `${{` expression.
fn unrendered(line: &str) -> bool {
    line.match_indices("{{")
        .any(|(i, _)| i == 0 || line.as_bytes()[i - 1] != b'$')
}

/// Column of a line's key (after indentation and any `- ` item markers) and
/// the key itself, if the line is `key:` or `key: value`.
fn key_of(line: &str) -> Option<(usize, &str)> {
    let mut col = line.len() - line.trim_start_matches(' ').len();
    let mut rest = &line[col..];
    while let Some(r) = rest.strip_prefix("- ") {
        let r2 = r.trim_start_matches(' ');
        col += 2 + (r.len() - r2.len());
        rest = r2;
    }
    if rest.starts_with('#') {
        return None;
    }
    let end = rest.find(':')?;
    let after = &rest[end + 1..];
    if !(after.is_empty() || after.starts_with(' ')) {
        return None;
    }
    let key = rest[..end].trim().trim_matches(|c| c == '"' || c == '\'');
    Some((col, key))
}

/// Column of a `- ` item marker, if the line starts a sequence item.
fn dash_of(line: &str) -> Option<usize> {
    let t = line.trim_start_matches(' ');
    (t == "-" || t.starts_with("- ")).then(|| line.len() - t.len())
}

fn blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// 0-based line and column of `path` in a block-style document (the deepest
/// step that could be found).
pub fn locate(text: &str, path: &[Seg<'_>]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let (mut lo, mut hi) = (0usize, lines.len());
    // Column the children of the current node are deeper than.
    let mut parent: isize = -1;
    let mut best = (lines.iter().position(|l| !blank(l)).unwrap_or(0), 0usize);
    for seg in path {
        match *seg {
            Seg::Key(k) => {
                // Children of a mapping share the column of its first key.
                let Some(child) = (lo..hi)
                    .filter(|&i| !blank(lines[i]))
                    .find_map(|i| key_of(lines[i]).map(|(c, _)| c))
                    .filter(|&c| c as isize > parent)
                else {
                    return best;
                };
                let Some(i) = (lo..hi)
                    .find(|&i| key_of(lines[i]).is_some_and(|(c, key)| c == child && key == k))
                else {
                    return best;
                };
                best = (i, child);
                let end = (i + 1..hi)
                    .find(|&j| {
                        !blank(lines[j]) && {
                            let ind = lines[j].len() - lines[j].trim_start_matches(' ').len();
                            ind <= child && !(ind == child && dash_of(lines[j]).is_some())
                        }
                    })
                    .unwrap_or(hi);
                lo = i + 1;
                hi = end;
                parent = child as isize;
            }
            Seg::Index(n) => {
                let Some(dash) = (lo..hi).find_map(|i| dash_of(lines[i])) else {
                    return best;
                };
                let items: Vec<usize> = (lo..hi)
                    .filter(|&i| dash_of(lines[i]) == Some(dash))
                    .collect();
                let Some(&i) = items.get(n) else {
                    return best;
                };
                best = (i, dash);
                hi = items.get(n + 1).copied().unwrap_or(hi);
                lo = i;
                parent = dash as isize;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use Seg::{Index, Key};

    const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  # comment
  containers:
    - name: a
      image: x
    - name: b
      securityContext:
        privileged: true
  volumes:
  - name: v
    hostPath:
      path: /etc
";

    #[test]
    fn locates_keys_and_items() {
        assert_eq!(locate(POD, &[Key("spec")]), (4, 0));
        assert_eq!(
            locate(POD, &[Key("spec"), Key("containers"), Index(1)]),
            (9, 4)
        );
        assert_eq!(
            locate(
                POD,
                &[
                    Key("spec"),
                    Key("containers"),
                    Index(1),
                    Key("securityContext"),
                    Key("privileged")
                ]
            ),
            (11, 8)
        );
        assert_eq!(
            locate(
                POD,
                &[
                    Key("spec"),
                    Key("volumes"),
                    Index(0),
                    Key("hostPath"),
                    Key("path")
                ]
            ),
            (15, 6)
        );
        // A missing key stops at the deepest one found.
        assert_eq!(
            locate(
                POD,
                &[Key("spec"), Key("containers"), Index(0), Key("resources")]
            ),
            (7, 4)
        );
        // `name` of metadata, not a container's.
        assert_eq!(locate(POD, &[Key("metadata"), Key("name")]), (3, 2));
    }

    #[test]
    fn yaml_that_does_not_parse_is_an_error_with_its_position() {
        let e = documents("x.yaml", "a: b\nc: [d, e\nf: g\n").unwrap_err();
        assert!(e.to_string().starts_with("x.yaml:"), "{e}");
        let e = documents("x.yaml", "ok: 1\n---\nkey: \"unterminated\n").unwrap_err();
        assert!(e.to_string().starts_with("x.yaml:4:"), "{e}");
        let e = documents("x.yaml", "a: 1\nb: {{ .Values.b }}\n").unwrap_err();
        assert!(
            e.to_string().starts_with("x.yaml:2: unrendered template"),
            "{e}"
        );
        assert!(validate("x.yaml", "a: 1\n---\nb: {{ x }}\n").is_err());
        // A CI expression is not a template.
        assert!(documents("w.yml", "run: echo ${{ github.sha }}\n").is_ok());
        let docs = documents("m.yaml", "a: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].start, 5);
    }
}
