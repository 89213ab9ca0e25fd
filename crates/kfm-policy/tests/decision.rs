//! The decision point fails closed: every way a policy can fail to give a
//! usable answer is a deny with its reason code.

mod common;

use std::time::Duration;

use common::*;
use kfm_policy::{Bundle, DecisionPoint, DecisionRecord, Options, reasons};
use serde_json::json;

fn decide(rego: &str, input: serde_json::Value) -> kfm_policy::Evaluation {
    let t = tiny_bundle(rego);
    let b = Bundle::load(t.path()).unwrap();
    DecisionPoint::new(&b, Options::default())
        .unwrap()
        .evaluate(&input)
}

#[test]
fn an_unknown_obligation_type_is_a_deny() {
    let e = decide(
        r#"package kfm.authz
decision := {"allow": true, "reason": "ok", "obligations": [{"type": "notify_owner"}]}
"#,
        json!({}),
    );
    assert!(!e.decision.allow);
    assert_eq!(e.decision.reason, reasons::UNKNOWN_OBLIGATION);
    assert!(e.decision.obligations.is_empty());
    assert!(e.detail.unwrap().contains("notify_owner"));
}

#[test]
fn malformed_results_are_a_deny() {
    for body in [
        r#"decision := true"#,
        r#"decision := {"allow": "yes", "reason": "ok", "obligations": []}"#,
        r#"decision := {"allow": true, "obligations": []}"#,
        r#"decision := {"allow": true, "reason": "", "obligations": []}"#,
        r#"decision := {"allow": true, "reason": "ok"}"#,
        r#"decision := {"allow": true, "reason": "ok", "obligations": {}}"#,
        r#"decision := {"allow": true, "reason": "ok", "obligations": [], "also": 1}"#,
        r#"decision := {"allow": true, "reason": "ok", "obligations": [{"type": "generalize", "method": "grid", "degrees": -1}]}"#,
        r#"decision := {"allow": true, "reason": "ok", "obligations": ["audit_durable"]}"#,
    ] {
        let e = decide(&format!("package kfm.authz\n{body}\n"), json!({}));
        assert!(!e.decision.allow, "{body}");
        assert_eq!(e.decision.reason, reasons::MALFORMED, "{body}");
    }
}

#[test]
fn an_undefined_result_is_a_deny() {
    let e = decide(
        r#"package kfm.authz
decision := {"allow": true, "reason": "ok", "obligations": []} if input.open == true
"#,
        json!({"open": false}),
    );
    assert_eq!(e.decision.reason, reasons::UNDEFINED);
    assert!(!e.decision.allow);
}

/// Conflicting definitions, type errors, bad function calls: the engine
/// reports them as an error or as undefined, and either way the answer is a
/// deny, never "the first definition wins".
#[test]
fn evaluation_errors_and_conflicts_are_a_deny() {
    for body in [
        "decision := {\"allow\": true, \"reason\": \"a\", \"obligations\": []} if input.x\n\
         decision := {\"allow\": false, \"reason\": \"b\", \"obligations\": []} if input.x",
        "decision := {\"allow\": true, \"reason\": \"a\", \"obligations\": []} if { y := input.s + 1; y > 0 }",
        "f(x) := 1 if x > 0\nf(x) := 2 if x > 1\n\
         decision := {\"allow\": true, \"reason\": \"a\", \"obligations\": []} if f(5) == 1",
        "decision := {\"allow\": true, \"reason\": \"a\", \"obligations\": []} if regex.match(\"(\", \"a\")",
    ] {
        let e = decide(
            &format!("package kfm.authz\n{body}\n"),
            json!({"x": true, "s": "text"}),
        );
        assert!(!e.decision.allow, "{body}");
        assert!(
            [reasons::ENGINE_ERROR, reasons::UNDEFINED].contains(&e.decision.reason.as_str()),
            "{body}: {:?}",
            e.decision
        );
    }
}

#[test]
fn an_evaluation_over_its_budget_is_a_deny() {
    let t = tiny_bundle(
        r#"package kfm.authz
n := count([x | some x in numbers.range(1, 3000000); x % 7 == 0])
decision := {"allow": true, "reason": "slow", "obligations": []} if n > 0
"#,
    );
    let b = Bundle::load(t.path()).unwrap();
    let options = Options {
        budget: Duration::from_millis(5),
        ..Options::default()
    };
    // Preparing evaluates the entry point on an empty input once: with a
    // small budget that already times out, which must not make the bundle
    // unusable, only every over-budget decision a deny.
    let point = match DecisionPoint::new(&b, options) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let e = point.evaluate(&json!({}));
    assert!(!e.decision.allow);
    assert_eq!(e.decision.reason, reasons::TIMEOUT, "{:?}", e.detail);
    assert!(
        e.elapsed < Duration::from_secs(2),
        "the budget stopped it: {:?}",
        e.elapsed
    );
}

#[test]
fn decisions_are_the_same_from_many_threads() {
    let point = point(&default_bundle_dir());
    let input = json!({
        "subject": {"id": "u", "roles": ["public"], "attributes": {}},
        "action": "read",
        "resource": {"kind": "features", "dataset": "ks-places", "policy_label": "public_generalized",
                     "zone": "published", "license": {"id": "CC0-1.0"}},
        "context": {"environment": "dev", "time": "2026-11-22T00:00:00Z"}
    });
    let expected = point.decide(&input);
    assert!(expected.allow);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert_eq!(point.decide(&input), expected);
                }
            });
        }
    });
}

#[test]
fn a_decision_record_holds_a_digest_of_the_input_never_the_input() {
    let point = point(&default_bundle_dir());
    let input = json!({
        "subject": {"id": "researcher-42", "roles": ["researcher"], "attributes": {"approved_access": ["ks-nest-sites"]}},
        "action": "read",
        "resource": {"kind": "features", "dataset": "ks-nest-sites", "policy_label": "restricted_sensitive_location",
                     "zone": "published", "license": {"id": "CC0-1.0"}},
        "context": {"environment": "dev", "time": "2026-11-22T00:00:00Z"}
    });
    let d = point.decide(&input);
    let r = DecisionRecord::new(&point, &input, &d, chrono::Utc::now()).unwrap();
    let entry = String::from_utf8(r.to_ledger_entry().unwrap()).unwrap();
    assert!(
        !entry.contains("researcher-42") && !entry.contains("ks-nest-sites"),
        "{entry}"
    );
    assert_eq!(r.bundle_digest, *point.digest());
    assert_eq!(r.bundle_revision, point.revision());
    assert_eq!(r.reason, "read.restricted_precise");
    // Key order does not change the input digest (canonical JSON).
    let reordered: serde_json::Value =
        serde_json::from_str(&serde_json::to_string_pretty(&input).unwrap()).unwrap();
    assert_eq!(
        kfm_policy::input_digest(&reordered).unwrap(),
        r.input_digest
    );
    let back: DecisionRecord = serde_json::from_str(&entry).unwrap();
    assert_eq!(back, r);
    assert!(entry.len() < 1024);
}

/// The runtime path: the enforcement point sets context.time to now. A
/// waiver that expired yesterday is not honoured; one that expires
/// tomorrow is.
#[test]
fn an_expired_waiver_is_not_honoured_at_runtime() {
    let copy = copy_bundle(&default_bundle_dir());
    let now = chrono::Utc::now();
    let waivers = format!(
        "waivers:\n  - {{id: W-1, owner: o@x, reason: r, expires: \"{}\", dataset: expired-ds, waives: license.unknown}}\n  \
         - {{id: W-2, owner: o@x, reason: r, expires: \"{}\", dataset: live-ds, waives: license.unknown}}\n  \
         - {{id: W-3, owner: \"\", reason: r, expires: \"{}\", dataset: ownerless-ds, waives: license.unknown}}\n  \
         - {{id: W-4, owner: o@x, reason: r, expires: \"{}\", dataset: sensitive-ds, waives: restricted.not_approved}}\n",
        (now - chrono::Duration::days(1)).to_rfc3339(),
        (now + chrono::Duration::days(1)).to_rfc3339(),
        (now + chrono::Duration::days(1)).to_rfc3339(),
        (now + chrono::Duration::days(1)).to_rfc3339(),
    );
    std::fs::write(copy.path().join("kfm/data.yaml"), waivers).unwrap();
    let point = point(copy.path());
    let at_runtime = |dataset: &str, label: &str| {
        point.decide(&json!({
            "subject": {"id": "u", "roles": ["researcher"], "attributes": {}},
            "action": "export",
            "resource": {"kind": "features", "dataset": dataset, "policy_label": label,
                         "zone": "published", "license": {"id": "LicenseRef-Pending", "attribution": "a"}},
            "context": {"environment": "prod", "time": chrono::Utc::now().to_rfc3339()}
        }))
    };
    let expired = at_runtime("expired-ds", "public");
    assert!(!expired.allow);
    assert_eq!(expired.reason, "license.unknown");
    let live = at_runtime("live-ds", "public");
    assert!(live.allow, "{live:?}");
    // A waiver without an owner is malformed: not honoured.
    assert!(!at_runtime("ownerless-ds", "public").allow);
    // Only waivable blockers can be waived.
    let d = at_runtime("sensitive-ds", "restricted");
    assert!(!d.allow);
}
