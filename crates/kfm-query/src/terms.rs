//! Search: what a word is, which words a feature holds, and `q=`.
//!
//! A word is a Unicode word (UAX #29 boundaries), lower-cased. A feature's
//! terms are `property U+001F word` for every word of its string and
//! number values (arrays of them too): the property is part of the term so
//! that a search can be limited to the properties the caller may see (a
//! redacted field is never matched, so it cannot be probed). The projector
//! stores these terms in a `text[]` column with a GIN index (PostgreSQL's
//! inverted index), the in-memory backend computes the same list, and both
//! match a query with the same rule.
//!
//! `q=` is a comma-separated list of alternatives (any may match, as in
//! OGC API – Records); each alternative's words must all appear, each in
//! any searchable property.

use serde_json::{Map, Value};
use unicode_segmentation::UnicodeSegmentation;

use crate::sql::{Param, Sql};
use crate::{QueryError, quote};

/// Separates the property from the word in a term.
pub const SEP: char = '\u{1f}';

const MAX_ALTERNATIVES: usize = 8;
const MAX_WORDS: usize = 8;

/// The words of a text, lower-cased, in order.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.unicode_words().map(str::to_lowercase)
}

fn value_words(v: &Value, out: &mut dyn FnMut(String)) {
    match v {
        Value::String(s) => words(s).for_each(out),
        Value::Number(n) => words(&n.to_string()).for_each(out),
        Value::Array(a) => {
            for x in a {
                if !matches!(x, Value::Array(_) | Value::Object(_)) {
                    value_words(x, out);
                }
            }
        }
        _ => {}
    }
}

/// A feature's terms, sorted and without repeats. Property names holding
/// the separator are not searchable (their terms would be ambiguous).
pub fn terms(props: Option<&Map<String, Value>>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in props.into_iter().flatten() {
        if k.contains(SEP) {
            continue;
        }
        value_words(v, &mut |w| out.push(format!("{k}{SEP}{w}")));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A parsed `q`.
#[derive(Clone, Debug, PartialEq)]
pub struct Search {
    /// Alternatives, each the words that must all appear.
    pub alternatives: Vec<Vec<String>>,
}

impl Search {
    pub fn parse(q: &str) -> Result<Search, QueryError> {
        let mut alternatives = Vec::new();
        for alt in q.split(',') {
            let mut ws: Vec<String> = words(alt).collect();
            ws.sort_unstable();
            ws.dedup();
            if ws.is_empty() {
                continue;
            }
            if ws.len() > MAX_WORDS {
                return Err(QueryError::new(
                    "q",
                    format!("at most {MAX_WORDS} words per alternative"),
                ));
            }
            alternatives.push(ws);
        }
        if alternatives.is_empty() {
            return Err(QueryError::new(
                "q",
                format!("{} holds no word to search for", quote(q)),
            ));
        }
        if alternatives.len() > MAX_ALTERNATIVES {
            return Err(QueryError::new(
                "q",
                format!("at most {MAX_ALTERNATIVES} comma-separated alternatives"),
            ));
        }
        Ok(Search { alternatives })
    }

    /// Whether a feature with these (sorted) terms matches, searching the
    /// `allowed` properties only.
    pub fn matches(&self, terms: &[String], allowed: &[String]) -> bool {
        self.alternatives.iter().any(|alt| {
            alt.iter().all(|w| {
                allowed
                    .iter()
                    .any(|p| terms.binary_search_by(|t| cmp_term(t, p, w)).is_ok())
            })
        })
    }

    /// Whether some alternative has all its words among `text`'s words;
    /// with how many of them a text field held (for ranking collections).
    pub fn matches_text(&self, fields: &[&str]) -> bool {
        let all: Vec<String> = fields.iter().flat_map(|f| words(f)).collect();
        self.alternatives
            .iter()
            .any(|alt| alt.iter().all(|w| all.iter().any(|x| x == w)))
    }

    /// The SQL reading: `terms && $n::text[]` per word (any allowed
    /// property), all words of an alternative, any alternative.
    pub(crate) fn sql(&self, allowed: &[String], sql: &mut Sql) -> String {
        if allowed.is_empty() {
            return "FALSE".into();
        }
        let alts: Vec<String> = self
            .alternatives
            .iter()
            .map(|alt| {
                let ws: Vec<String> = alt
                    .iter()
                    .map(|w| {
                        let arr = allowed.iter().map(|p| format!("{p}{SEP}{w}")).collect();
                        format!("terms && {}", sql.bind(Param::TextArray(arr)))
                    })
                    .collect();
                format!("({})", ws.join(" AND "))
            })
            .collect();
        format!("({})", alts.join(" OR "))
    }
}

/// Orders a stored term against `prop SEP word` without building it.
fn cmp_term(t: &str, prop: &str, word: &str) -> std::cmp::Ordering {
    let mut sep = [0u8; 4];
    let sep = SEP.encode_utf8(&mut sep).as_bytes();
    t.as_bytes().iter().cmp(
        prop.as_bytes()
            .iter()
            .chain(sep.iter())
            .chain(word.as_bytes().iter()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terms_words_and_searches() {
        let p = json!({"name": "Wichita Falls", "pop": 38.5, "tags": ["Great Plains", 7], "secret": "Wichita"});
        let t = terms(p.as_object());
        assert!(t.contains(&format!("name{SEP}wichita")));
        assert!(t.contains(&format!("pop{SEP}38.5")));
        assert!(t.contains(&format!("tags{SEP}plains")));
        let allowed: Vec<String> = vec!["name".into(), "tags".into()];
        assert!(Search::parse("WICHITA").unwrap().matches(&t, &allowed));
        assert!(
            Search::parse("falls wichita")
                .unwrap()
                .matches(&t, &allowed)
        );
        assert!(!Search::parse("falls topeka").unwrap().matches(&t, &allowed));
        assert!(
            Search::parse("topeka, plains")
                .unwrap()
                .matches(&t, &allowed)
        );
        // Not searchable where the caller may not look.
        let only_secret = vec!["pop".to_owned()];
        assert!(!Search::parse("wichita").unwrap().matches(&t, &only_secret));
        assert!(Search::parse(" , ;").is_err());
        assert!(
            Search::parse("Ünïcode wörds").unwrap().alternatives[0].contains(&"ünïcode".to_owned())
        );
    }
}
