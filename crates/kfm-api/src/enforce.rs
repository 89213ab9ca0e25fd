//! The enforcement point: builds the policy input for a request, asks the
//! decision point, and turns the obligations into what the handlers must
//! do. An obligation this code cannot carry out is a deny.

use kfm_pipeline::generalize::Plan;
use kfm_policy::{Decision, DecisionRecord, Generalization, Obligation};
use serde_json::{Value, json};

use crate::AppState;
use crate::audit::AuditNote;
use crate::auth::Principal;
use crate::releases::{Release, Shape};

/// What a granted request must honour.
#[derive(Clone)]
pub struct Grant {
    pub shape: Shape,
    /// (license, attribution text) to attach.
    pub attribution: Option<(String, String)>,
    pub reason: String,
    pub obligations: Vec<&'static str>,
    pub note: AuditNote,
}

/// The outcome of asking the policy about one release.
pub enum Verdict {
    Allow(Grant),
    /// Denied: the note carries the decision for the ledger.
    Deny(AuditNote),
}

fn subject(who: &Principal) -> Value {
    json!({
        "id": who.id,
        "roles": who.roles,
        "attributes": {"approved_access": who.approved_access},
    })
}

fn context(st: &AppState, second: &str) -> Value {
    json!({
        "environment": st.config.environment.as_str(),
        "time": second,
    })
}

/// The current second, as the policy input carries it.
fn now_second() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The policy input for `action` on a release, at `second`: the input
/// contract the policy bundle is written against.
pub fn input(st: &AppState, who: &Principal, action: &str, rel: &Release, second: &str) -> Value {
    let m = &rel.manifest;
    let release = if withdrawn(st, rel) {
        "withdrawn"
    } else {
        "current"
    };
    let mut license = json!({"id": m.license});
    if let Some(a) = &m.attribution {
        license["attribution"] = json!(a);
    }
    let mut resource = json!({
        "kind": "features",
        "dataset": m.dataset,
        "version_id": m.version_id,
        "policy_label": m.policy_label,
        "zone": "published",
        "release": release,
        "license": license,
    });
    if let Some(d) = &m.distribution {
        resource["distribution"] = json!(d);
    }
    if let Some(e) = m.embargo_until {
        resource["embargo_until"] = json!(format!("{e}T00:00:00Z"));
    }
    if let Some(g) = rel.generalization() {
        resource["generalization"] = g.clone();
    }
    json!({
        "subject": subject(who),
        "action": action,
        "resource": resource,
        "context": context(st, second),
    })
}

/// Decisions for identical inputs within one second. The input carries the
/// time to the second and the policy is a pure function of its input and
/// the pinned bundle, so a cached answer is exactly the one the policy
/// would give again; the cache empties when the second changes. It is keyed
/// by what the input is built from (the caller, the action, the immutable
/// release version; the environment is fixed per process), so a hit builds
/// no input at all.
#[derive(Default)]
pub struct DecisionCache {
    inner: std::sync::Mutex<CacheSecond>,
}

/// The second the cached decisions were taken in, and the decisions by
/// what their input was built from.
type CacheSecond = (
    String,
    std::collections::HashMap<String, (Decision, kfm_core::Digest)>,
);

fn decide(
    st: &AppState,
    key: String,
    second: String,
    input: impl FnOnce() -> Value,
    action: &'static str,
) -> (Decision, Option<DecisionRecord>) {
    let hit = st.decisions.inner.lock().ok().and_then(|c| {
        if c.0 == second {
            c.1.get(&key).cloned()
        } else {
            None
        }
    });
    let (decision, digest) = match hit {
        Some(h) => h,
        None => {
            let input = input();
            // Invariant: a decision is recorded with the digest of the input
            // it was taken on, or not taken at all. An input without a
            // canonical form is refused (fail closed) and its access record
            // carries no decision rather than a digest of nothing.
            let digest = match kfm_policy::input_digest(&input) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, action, "policy input has no canonical form; refusing");
                    st.metrics.decision(false, action);
                    return (
                        Decision::deny("the policy input could not be encoded"),
                        None,
                    );
                }
            };
            let d = st.policy.decide(&input);
            if let Ok(mut c) = st.decisions.inner.lock() {
                if c.0 != second || c.1.len() > 4096 {
                    c.1.clear();
                    c.0 = second;
                }
                c.1.insert(key, (d.clone(), digest));
            }
            (d, digest)
        }
    };
    st.metrics.decision(decision.allow, action);
    let record =
        DecisionRecord::for_input_digest(&st.policy, digest, &decision, chrono::Utc::now());
    (decision, Some(record))
}

fn plan_of(g: &Generalization) -> Option<Plan> {
    match *g {
        Generalization::Grid { degrees }
            if degrees.is_finite() && degrees > 0.0 && degrees <= 10.0 =>
        {
            Some(Plan::Grid { degrees })
        }
        Generalization::H3 { resolution } => h3o::Resolution::try_from(resolution)
            .ok()
            .map(|resolution| Plan::H3 { resolution }),
        Generalization::Grid { .. } => None,
    }
}

/// Whether `rel` is not the version its dataset's pointer names now (a
/// superseded version, read through the evidence resolver).
fn withdrawn(st: &AppState, rel: &Release) -> bool {
    st.releases
        .get(&rel.dataset)
        .is_none_or(|c| c.manifest_digest != rel.manifest_digest)
}

/// Asks the policy whether `who` may `action` this release.
pub fn release(st: &AppState, who: &Principal, action: &'static str, rel: &Release) -> Verdict {
    let second = now_second();
    let key = format!(
        "release\0{action}\0{}\0{}\0{}\0{:?}\0{:?}\0{}",
        rel.dataset,
        rel.version_id,
        who.id,
        who.roles,
        who.approved_access,
        withdrawn(st, rel)
    );
    let (decision, record) = decide(
        st,
        key,
        second.clone(),
        || input(st, who, action, rel, &second),
        action,
    );
    let mut note = AuditNote {
        action,
        dataset: Some(rel.dataset.clone()),
        version_id: Some(rel.version_id.clone()),
        decision: record.map(std::sync::Arc::new),
        durable: false,
    };
    if !decision.allow {
        return Verdict::Deny(note);
    }
    let mut shape = Shape {
        generalize: None,
        redact: Vec::new(),
    };
    let mut attribution = None;
    let mut kinds = Vec::new();
    for o in &decision.obligations {
        kinds.push(o.kind());
        match o {
            Obligation::Generalize { how } => match plan_of(how) {
                // Two generalisations: the coarser one is not knowable in
                // general (grid vs H3), so apply both in order.
                Some(p) if shape.generalize.is_none() => shape.generalize = Some(p),
                Some(_) => {}
                // Cannot carry it out: refuse (the access record's status
                // shows the enforcement point overrode the allow).
                None => return Verdict::Deny(note),
            },
            Obligation::Attribution { license, text } => {
                attribution = Some((license.clone(), text.clone()));
            }
            Obligation::RedactFields { fields } => shape.redact.extend(fields.iter().cloned()),
            Obligation::AuditDurable {} => note.durable = true,
        }
    }
    // Attribution the license does not require still travels with the data
    // when the source gave one: credit is never stripped.
    if attribution.is_none()
        && let Some(text) = &rel.manifest.attribution
    {
        attribution = Some((rel.manifest.license.clone(), text.clone()));
    }
    Verdict::Allow(Grant {
        shape,
        attribution,
        reason: decision.reason,
        obligations: kinds,
        note,
    })
}

/// Asks the policy whether `who` may read the audit trail.
pub fn audit_read(st: &AppState, who: &Principal) -> (bool, AuditNote) {
    staff_read(st, who, "audit")
}

/// Asks the policy whether `who` may read the stewards' truth-path view
/// (every dataset's stage, gate tables and quarantine reports).
pub fn steward_read(st: &AppState, who: &Principal) -> (bool, AuditNote) {
    staff_read(st, who, "steward")
}

/// A read of something that is not a dataset (`audit`, `steward`): the
/// policy decides on the caller's roles alone. A denial is recorded
/// durably, like every denial.
fn staff_read(st: &AppState, who: &Principal, action: &'static str) -> (bool, AuditNote) {
    let second = now_second();
    let key = format!(
        "{action}\0{}\0{:?}\0{:?}",
        who.id, who.roles, who.approved_access
    );
    let input = || {
        json!({
            "subject": subject(who),
            "action": action,
            "resource": {"kind": action, "zone": "published"},
            "context": context(st, &second),
        })
    };
    let (decision, record) = decide(st, key, second.clone(), input, action);
    let durable = decision
        .obligations
        .iter()
        .any(|o| matches!(o, Obligation::AuditDurable {}));
    (
        decision.allow,
        AuditNote {
            action,
            dataset: None,
            version_id: None,
            decision: record.map(std::sync::Arc::new),
            durable: durable || !decision.allow,
        },
    )
}
