//! SQL `LIKE` as PostgreSQL evaluates it (default escape `\`, by
//! character), so that the in-memory backend matches what the database
//! matches. Patterns are checked before use: one that ends in a lone
//! escape is refused, as PostgreSQL refuses it.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Any,
    One,
    Lit(char),
}

/// A checked pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern(Vec<Tok>);

impl Pattern {
    pub(crate) fn parse(p: &str) -> Result<Pattern, String> {
        let mut out = Vec::new();
        let mut it = p.chars();
        while let Some(c) = it.next() {
            out.push(match c {
                '%' => Tok::Any,
                '_' => Tok::One,
                '\\' => match it.next() {
                    Some(e) => Tok::Lit(e),
                    None => {
                        return Err(
                            "a LIKE pattern must not end with the escape character \\ (write \\\\ for a backslash)"
                                .into(),
                        );
                    }
                },
                c => Tok::Lit(c),
            });
        }
        Ok(Pattern(out))
    }

    /// Whether `s` matches (iterative, with backtracking to the last `%`
    /// only: linear in practice, never exponential).
    pub(crate) fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        let p = &self.0;
        let (mut i, mut j) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            match p.get(j) {
                Some(Tok::Any) => {
                    star = Some((j, i));
                    j += 1;
                }
                Some(Tok::One) => {
                    i += 1;
                    j += 1;
                }
                Some(Tok::Lit(c)) if *c == s[i] => {
                    i += 1;
                    j += 1;
                }
                _ => match star {
                    Some((sj, si)) => {
                        j = sj + 1;
                        i = si + 1;
                        star = Some((sj, si + 1));
                    }
                    None => return false,
                },
            }
        }
        p[j.min(p.len())..].iter().all(|t| *t == Tok::Any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::parse(p).unwrap().matches(s)
    }

    #[test]
    fn like_as_postgresql_reads_it() {
        assert!(m("Abi%", "Abilene"));
        assert!(m("%ene", "Abilene"));
        assert!(m("A_ilene", "Abilene"));
        assert!(!m("A_ilene", "Ailene"));
        assert!(m("%", ""));
        assert!(!m("_", ""));
        assert!(m("100\\%", "100%"));
        assert!(!m("100\\%", "1000"));
        assert!(m("a\\\\b", "a\\b"));
        assert!(m("%a%b%c%", "xxaxxbxxcxx"));
        assert!(!m("%a%b%c%", "xxaxxcxxbxx"));
        assert!(m("é_", "éa"));
        assert!(!m("abc", "ABC"));
        assert!(Pattern::parse("oops\\").is_err());
    }
}
