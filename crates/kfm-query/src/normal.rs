//! Properties as both backends serve them.
//!
//! The projection stores a feature's properties as `jsonb`, which keeps a
//! number's digits but not how it was spelled (`1.0` and `1` are one
//! value) and orders keys its own way. So that the in-memory backend and
//! the database answer the same bytes, both serve properties in one normal
//! form: every number as RFC 8785 (JCS) writes it, read back (`1.0` is
//! `1`), and every object's keys in byte order. The projector stores JCS
//! text, so what PostgreSQL returns is already in this form but for key
//! order; the in-memory backend normalises the artifact's features once,
//! when it loads them.

use serde_json::{Map, Number, Value};

/// A number as JCS writes it, read back (`None` if it cannot be written,
/// which JSON numbers always can be).
fn number(n: &Number) -> Option<Number> {
    let text = serde_json_canonicalizer::to_string(&Value::Number(n.clone())).ok()?;
    text.parse::<Number>().ok()
}

/// Normalises a value in place (deep).
pub fn value(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(m) = number(n) {
                *n = m;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(value),
        Value::Object(m) => object(m),
        _ => {}
    }
}

/// Normalises an object in place (deep): numbers, then key order.
pub fn object(m: &mut Map<String, Value>) {
    m.values_mut().for_each(value);
    m.sort_keys();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_as_jcs_writes_them_and_keys_in_byte_order() {
        let mut v = json!({"b": 1.0, "a": [2.50, 1e21, 1e-7], "c": {"z": 3, "y": 0.1}});
        value(&mut v);
        assert_eq!(
            v.to_string(),
            r#"{"a":[2.5,1e+21,1e-7],"b":1,"c":{"y":0.1,"z":3}}"#
        );
        // What jsonb prints for the JCS text reads back the same.
        let from_db: Value = serde_json::from_str(
            r#"{"b": 1, "a": [2.5, 1000000000000000000000, 0.0000001], "c": {"y": 0.1, "z": 3}}"#,
        )
        .unwrap();
        let mut from_db = from_db;
        value(&mut from_db);
        assert_eq!(from_db, v);
    }
}
