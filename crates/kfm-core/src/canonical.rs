//! Canonical JSON (RFC 8785, JCS).
//!
//! Records that are hashed or signed are serialised canonically so that the
//! same record always has the same bytes, on every machine.

use serde::Serialize;

/// Serialises `value` as RFC 8785 canonical JSON.
pub fn to_canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json_canonicalizer::to_vec(value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v = serde_json::json!({"b": 1, "a": [true, null, "x"], "c": 1.0});
        let out = super::to_canonical_json(&v).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[true,null,"x"],"b":1,"c":1}"#
        );
    }
}
