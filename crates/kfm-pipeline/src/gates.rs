//! The Promotion Contract's vocabulary: gates A–G and what each answered.
//!
//! A gate that cannot be evaluated counts as failed (fail closed). Gates F
//! and G change the world (ledger, store, pointer), so they run only when
//! A–E all passed; otherwise they are reported as not run.

use chrono::NaiveDate;
use kfm_core::{LicenseId, PolicyLabel};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Gate {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
}

impl Gate {
    pub const ALL: [Gate; 7] = [
        Gate::A,
        Gate::B,
        Gate::C,
        Gate::D,
        Gate::E,
        Gate::F,
        Gate::G,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Gate::A => "identity & versioning",
            Gate::B => "licensing & rights",
            Gate::C => "sensitivity",
            Gate::D => "catalog triplet",
            Gate::E => "quality (QA)",
            Gate::F => "run receipt & audit record",
            Gate::G => "release manifest & pointer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    CannotEvaluate,
    /// Not attempted because an earlier gate did not pass.
    NotRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::CannotEvaluate => "cannot evaluate",
            Status::NotRun => "not run",
        }
    }
}

/// One gate's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: Gate,
    pub name: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl GateResult {
    pub fn pass(gate: Gate, notes: Vec<String>) -> Self {
        Self::new(gate, Status::Pass, notes)
    }
    pub fn fail(gate: Gate, reasons: Vec<String>) -> Self {
        Self::new(gate, Status::Fail, reasons)
    }
    pub fn cannot(gate: Gate, reason: impl Into<String>) -> Self {
        Self::new(gate, Status::CannotEvaluate, vec![reason.into()])
    }
    /// Cannot evaluate, for several reasons at once.
    pub fn cannot_all(gate: Gate, reasons: Vec<String>) -> Self {
        Self::new(gate, Status::CannotEvaluate, reasons)
    }
    pub fn not_run(gate: Gate) -> Self {
        Self::new(
            gate,
            Status::NotRun,
            vec!["not run: an earlier gate did not pass".into()],
        )
    }
    fn new(gate: Gate, status: Status, reasons: Vec<String>) -> Self {
        Self {
            gate,
            name: gate.title().to_owned(),
            status,
            reasons,
        }
    }
    pub fn passed(&self) -> bool {
        self.status == Status::Pass
    }
}

/// Gate B's rule, the same for a promotion (from its spec) and a rollback
/// (from the stored version's manifest): what the policy's license table
/// says of a license.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LicenseFacts {
    /// `NOASSERTION` or the like: the rights are unknown.
    pub unknown: bool,
    /// The policy bundle's `data.kfm.licenses` names it.
    pub in_policy: bool,
    /// Its terms (or the policy) require attribution text.
    pub needs_attribution: bool,
}

/// `licenses`: the policy bundle's `data.kfm.licenses` (license id →
/// `{attribution: bool}`).
pub fn license_facts(id: &LicenseId, licenses: &serde_json::Value) -> LicenseFacts {
    let entry = licenses.get(id.as_str());
    LicenseFacts {
        unknown: id.is_unknown(),
        in_policy: entry.is_some(),
        needs_attribution: id.requires_attribution()
            || entry.is_some_and(|e| e.get("attribution") == Some(&serde_json::Value::Bool(true))),
    }
}

/// Gate C's release rules on the label and the date, the same for a
/// promotion and a rollback: a quarantined dataset is never released, an
/// embargoed one not before its date (and not at all if the date is
/// missing). `None`: the label leaves the decision to the caller's own
/// checks (a sensitive location's generalised derivative).
pub fn release_rule(
    label: PolicyLabel,
    embargo_until: Option<NaiveDate>,
    today: NaiveDate,
) -> Option<GateResult> {
    match label {
        PolicyLabel::Quarantine => Some(GateResult::fail(
            Gate::C,
            vec!["policy_label is quarantine: a quarantined dataset is never released; relabel it after review".into()],
        )),
        PolicyLabel::Embargoed => Some(match embargo_until {
            None => GateResult::cannot(
                Gate::C,
                "policy_label is embargoed but no embargo date is recorded (sensitivity.embargo_until): the release date cannot be judged",
            ),
            Some(d) if today < d => GateResult::fail(
                Gate::C,
                vec![format!(
                    "embargoed until {d}: not released before its date (today is {today})"
                )],
            ),
            Some(d) => GateResult::pass(Gate::C, vec![format!("embargo ended {d}")]),
        }),
        _ => None,
    }
}

/// Renders a gate table for a terminal.
pub fn table(results: &[GateResult]) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(&format!(
            "  {:?}  {:<28} {}\n",
            r.gate,
            r.name,
            r.status.as_str()
        ));
        for reason in &r.reasons {
            out.push_str(&format!("       - {reason}\n"));
        }
    }
    out
}
