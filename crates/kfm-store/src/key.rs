//! Keys inside a zone.

use crate::error::{Result, StoreError};

/// Checks a zone-relative key: `/`-separated, no empty, `.` or `..`
/// segments, no control characters, backslashes or `#` (the local backend
/// uses `#` for staging files). Keys are built from validated ids, so a bad
/// key here is a programming error or a hostile input; either way it must
/// not reach the backend.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if key
        .bytes()
        .any(|b| b.is_ascii_control() || b == b'\\' || b == b'#')
    {
        return bad("contains a control character, backslash or '#'");
    }
    for seg in key.split('/') {
        match seg {
            "" => return bad("has an empty segment (leading, trailing or double '/')"),
            "." | ".." => return bad("has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_key;

    #[test]
    fn traversal_and_oddities_are_refused() {
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", "a/./b", "a\\b", "a\nb", "a#1",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "ks/abc/source.csv", "v1/x.json"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }
}
