//! `kfm policy diff`: review a policy change by its effect.
//!
//! Recorded decision inputs are replayed against the old and the new
//! bundle; every input whose decision changes (allow, reason or
//! obligations) is listed. Inputs are identified by their digest in the
//! output, so a diff can be shared without the inputs themselves.

use std::path::Path;

use kfm_core::Digest;
use serde::Serialize;

use crate::decision::{Decision, DecisionPoint};
use crate::record::input_digest;

/// One decision that the change alters.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Position in the inputs file (0-based).
    pub index: usize,
    /// Line of the input in a JSON Lines file (1-based), when it was one.
    pub line: Option<usize>,
    pub input_digest: Digest,
    pub before: Decision,
    pub after: Decision,
}

/// Reads decision inputs: one JSON object, a JSON array of them, or JSON
/// Lines (one input a line, blank lines ignored). Returns each with its
/// line when JSON Lines.
pub fn read_inputs(path: &Path) -> Result<Vec<(Option<usize>, serde_json::Value)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim_start().starts_with('[') {
        let all: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
        return Ok(all.into_iter().map(|v| (None, v)).collect());
    }
    if let Ok(one @ serde_json::Value::Object(_)) = serde_json::from_str(&text) {
        return Ok(vec![(None, one)]);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), i + 1, e.column()))?;
        out.push((Some(i + 1), v));
    }
    Ok(out)
}

/// Every input whose decision differs between `old` and `new`.
///
/// Fails with the (0-based) index of the first changed input that has no
/// canonical form, since its digest would identify nothing.
pub fn diff(
    old: &DecisionPoint,
    new: &DecisionPoint,
    inputs: &[(Option<usize>, serde_json::Value)],
) -> Result<Vec<Change>, (usize, serde_json::Error)> {
    let mut out = Vec::new();
    for (index, (line, input)) in inputs.iter().enumerate() {
        let before = old.decide(input);
        let after = new.decide(input);
        if before != after {
            out.push(Change {
                index,
                line: *line,
                input_digest: input_digest(input).map_err(|e| (index, e))?,
                before,
                after,
            });
        }
    }
    Ok(out)
}
