//! Obligations: what the enforcement point must do before it answers.
//!
//! The set is closed. A policy that asks for something not listed here gets
//! a deny from the decision point: an enforcement point that cannot honour
//! an obligation must not serve.

use serde::{Deserialize, Serialize};

/// How coordinates are generalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Generalization {
    /// Snap to a grid of `degrees` (0 < degrees <= 10).
    Grid { degrees: f64 },
    /// Replace by the centre of the H3 cell at `resolution` (0..=15).
    H3 { resolution: u8 },
}

/// One obligation. Serialised as `{"type": "<snake_case>", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Obligation {
    /// Snap coordinates before answering.
    Generalize {
        #[serde(flatten)]
        how: Generalization,
    },
    /// Attach the license and its attribution text.
    Attribution { license: String, text: String },
    /// Drop these properties from every feature.
    RedactFields { fields: Vec<String> },
    /// Answer only once the audit record is durable in the ledger.
    AuditDurable {},
}

impl Obligation {
    /// The `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Generalize { .. } => "generalize",
            Self::Attribution { .. } => "attribution",
            Self::RedactFields { .. } => "redact_fields",
            Self::AuditDurable {} => "audit_durable",
        }
    }
}

/// Why an obligation could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObligationError {
    /// A `type` this enforcement point does not know.
    Unknown(String),
    /// A known type with missing, extra or out-of-range fields.
    Malformed(String),
}

/// Reads one obligation strictly: every field checked, none extra.
pub fn parse_obligation(v: &serde_json::Value) -> Result<Obligation, ObligationError> {
    use ObligationError::{Malformed, Unknown};
    let serde_json::Value::Object(map) = v else {
        return Err(Malformed("an obligation is an object".into()));
    };
    let kind = match map.get("type") {
        Some(serde_json::Value::String(t)) => t.as_str(),
        _ => return Err(Malformed("`type` is missing or not a string".into())),
    };
    let allowed: &[&str] = match kind {
        "generalize" => &["type", "method", "degrees", "resolution"],
        "attribution" => &["type", "license", "text"],
        "redact_fields" => &["type", "fields"],
        "audit_durable" => &["type"],
        other => return Err(Unknown(other.to_owned())),
    };
    if let Some(extra) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Malformed(format!(
            "`{kind}` has an unexpected field `{extra}`"
        )));
    }
    let string = |key: &str| match map.get(key) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(Malformed(format!(
            "`{kind}` needs a non-empty string `{key}`"
        ))),
    };
    match kind {
        "generalize" => match map.get("method").and_then(|m| m.as_str()) {
            Some("grid") => {
                if map.contains_key("resolution") {
                    return Err(Malformed("grid generalisation takes `degrees` only".into()));
                }
                match map.get("degrees").and_then(serde_json::Value::as_f64) {
                    Some(d) if d > 0.0 && d <= 10.0 => Ok(Obligation::Generalize {
                        how: Generalization::Grid { degrees: d },
                    }),
                    _ => Err(Malformed(
                        "grid `degrees` must be a number in (0, 10]".into(),
                    )),
                }
            }
            Some("h3") => {
                if map.contains_key("degrees") {
                    return Err(Malformed(
                        "h3 generalisation takes `resolution` only".into(),
                    ));
                }
                match map.get("resolution").and_then(serde_json::Value::as_u64) {
                    Some(r) if r <= 15 => Ok(Obligation::Generalize {
                        how: Generalization::H3 {
                            resolution: r as u8,
                        },
                    }),
                    _ => Err(Malformed(
                        "h3 `resolution` must be an integer 0..=15".into(),
                    )),
                }
            }
            _ => Err(Malformed(
                "generalize `method` must be `grid` or `h3`".into(),
            )),
        },
        "attribution" => Ok(Obligation::Attribution {
            license: string("license")?,
            text: string("text")?,
        }),
        "redact_fields" => match map.get("fields") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|f| {
                    f.as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .ok_or_else(|| Malformed("`fields` holds non-empty strings".into()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|fields| Obligation::RedactFields { fields }),
            _ => Err(Malformed("redact_fields needs an array `fields`".into())),
        },
        _ => Ok(Obligation::AuditDurable {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_obligations_round_trip() {
        for v in [
            json!({"type": "generalize", "method": "grid", "degrees": 0.1}),
            json!({"type": "generalize", "method": "h3", "resolution": 6}),
            json!({"type": "attribution", "license": "CC-BY-4.0", "text": "© KGS"}),
            json!({"type": "redact_fields", "fields": ["owner"]}),
            json!({"type": "audit_durable"}),
        ] {
            let o = parse_obligation(&v).unwrap();
            assert_eq!(serde_json::to_value(&o).unwrap(), v);
        }
    }

    #[test]
    fn unknown_and_malformed_are_told_apart() {
        assert_eq!(
            parse_obligation(&json!({"type": "notify_owner"})),
            Err(ObligationError::Unknown("notify_owner".into()))
        );
        for bad in [
            json!({"type": "generalize", "method": "grid", "degrees": 0}),
            json!({"type": "generalize", "method": "grid", "degrees": 11}),
            json!({"type": "generalize", "method": "h3", "resolution": 16}),
            json!({"type": "generalize", "method": "round"}),
            json!({"type": "attribution", "license": "MIT"}),
            json!({"type": "audit_durable", "when": "later"}),
            json!({"type": "redact_fields", "fields": [1]}),
            json!("audit_durable"),
        ] {
            assert!(
                matches!(parse_obligation(&bad), Err(ObligationError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
