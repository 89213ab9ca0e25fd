//! Default deny, by property: over random inputs (random roles, labels,
//! actions, zones, licenses, times; missing and malformed fields), every
//! allow of the default bundle falls in a class that a fixture justifies,
//! and satisfies the platform's rules checked here independently of Rego.
//! Nothing else is ever allowed.

mod common;

use std::collections::BTreeSet;

use common::*;
use kfm_policy::runner::fixtures;
use kfm_policy::{Bundle, Decision, DecisionPoint, Obligation, Options};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

/// What kind of allow this is: action, label, reason, obligation types.
type Class = (String, String, String, Vec<String>);

fn class(input: &Value, d: &Decision) -> Class {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    // Attribution depends on the license alone and is checked on its own
    // (check_allow); the class is the rest.
    let mut kinds: Vec<String> = d
        .obligations
        .iter()
        .map(|o| o.kind().to_owned())
        .filter(|k| k != "attribution")
        .collect();
    kinds.sort();
    let label = if input["action"] == "audit" {
        String::new()
    } else {
        s(&input["resource"]["policy_label"])
    };
    (s(&input["action"]), label, d.reason.clone(), kinds)
}

/// Picks one of `options`, or leaves the field out (`None`).
fn one_of(options: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    let n = options.len();
    (0..=n).prop_map(move |i| options.get(i).cloned())
}

/// Mostly one of the `valid` values; sometimes an `invalid` one or none, so
/// that allows are common enough for the property to bite.
fn mostly(valid: Vec<Value>, invalid: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        12 => proptest::sample::select(valid).prop_map(Some),
        1 => proptest::sample::select(invalid).prop_map(Some),
        1 => Just(None),
    ]
}

fn roles() -> impl Strategy<Value = Option<Value>> {
    let pool = [
        "public",
        "researcher",
        "steward",
        "auditor",
        "admin",
        "engineer",
        "Researcher",
        "root",
        "",
    ];
    prop_oneof![
        8 => proptest::collection::vec(
            prop_oneof![
                8 => proptest::sample::select(pool.to_vec()).prop_map(|r| json!(r)),
                1 => Just(json!(7)),
                1 => Just(json!(["researcher"])),
            ],
            0..4
        )
        .prop_map(|v| Some(Value::Array(v))),
        1 => one_of(vec![json!("researcher"), json!(null), json!({"researcher": true})]),
    ]
}

const DATASETS: [&str; 4] = [
    "ks-places",
    "ks-nest-sites",
    "ks-oral-histories",
    "ks-1880-census-manuscripts",
];

fn datasets() -> impl Strategy<Value = Option<Value>> {
    mostly(
        DATASETS.iter().map(|d| json!(d)).collect(),
        vec![json!(""), json!(5)],
    )
}

fn approved() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => proptest::collection::vec(proptest::sample::select(DATASETS.to_vec()), 1..4)
            .prop_map(|v| Some(json!(v))),
        1 => one_of(vec![json!("ks-nest-sites"), json!(true), json!(["*"])]),
    ]
}

fn labels() -> impl Strategy<Value = Option<Value>> {
    mostly(
        vec![
            json!("public"),
            json!("public_generalized"),
            json!("restricted"),
            json!("restricted_sensitive_location"),
            json!("internal"),
            json!("embargoed"),
            json!("quarantine"),
        ],
        vec![
            json!("secret"),
            json!("PUBLIC"),
            json!(""),
            json!(1),
            json!(null),
        ],
    )
}

const TIMES: [&str; 4] = [
    "2026-01-15T00:00:00Z",
    "2026-11-22T12:00:00Z",
    "2027-01-01T00:00:00Z",
    "2027-07-01T00:00:00+02:00",
];

fn times() -> impl Strategy<Value = Option<Value>> {
    mostly(
        TIMES.iter().map(|t| json!(t)).collect(),
        vec![json!("yesterday"), json!("2026-13-45T99:00:00Z"), json!(5)],
    )
}

fn license() -> impl Strategy<Value = Option<Value>> {
    (
        mostly(
            vec![
                json!("CC0-1.0"),
                json!("CC-BY-4.0"),
                json!("MIT"),
                json!("LicenseRef-Pending"),
            ],
            vec![json!("NOASSERTION"), json!("NONE"), json!(""), json!(9)],
        ),
        mostly(
            vec![json!("Contains data from GeoNames")],
            vec![json!(""), json!(3)],
        ),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(id, attribution, as_object)| {
            if !as_object {
                return id;
            }
            let mut m = serde_json::Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            if let Some(a) = attribution {
                m.insert("attribution".into(), a);
            }
            Some(Value::Object(m))
        })
}

fn generalization() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        1 => (-5.0f64..50.0).prop_map(|d| Some(json!({"method": "grid", "degrees": d}))),
        1 => (-2i64..20).prop_map(|r| Some(json!({"method": "h3", "resolution": r}))),
        1 => one_of(vec![json!("coarse"), json!({"method": "round"})]),
    ]
}

fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

fn inputs() -> impl Strategy<Value = Value> {
    let subject = (roles(), approved(), 0..12u8).prop_map(|(roles, approved, shape)| match shape {
        0 => None,
        1 => Some(json!("admin")),
        _ => Some(object(vec![
            ("id", Some(json!("u-1"))),
            ("roles", roles),
            (
                "attributes",
                Some(object(vec![("approved_access", approved)])),
            ),
        ])),
    });
    let action = mostly(
        vec![json!("read"), json!("export"), json!("audit")],
        vec![
            json!("delete"),
            json!("READ"),
            json!(""),
            json!(null),
            json!(["read"]),
        ],
    );
    let resource = (
        datasets(),
        labels(),
        mostly(
            vec![json!("published"), json!("processed"), json!("catalog")],
            vec![json!("raw"), json!("work"), json!("quarantine")],
        ),
        license(),
        one_of(vec![json!("mirror"), json!("metadata-only")]),
        one_of(vec![
            json!("2026-06-01T00:00:00Z"),
            json!("2027-06-30T00:00:00Z"),
            json!("soon"),
        ]),
        generalization(),
    )
        .prop_map(
            |(dataset, label, zone, license, distribution, embargo, generalization)| {
                Some(object(vec![
                    ("kind", Some(json!("features"))),
                    ("dataset", dataset),
                    ("policy_label", label),
                    ("zone", zone),
                    ("license", license),
                    ("distribution", distribution),
                    ("embargo_until", embargo),
                    ("generalization", generalization),
                ]))
            },
        );
    let context = times().prop_map(|time| {
        Some(object(vec![
            ("environment", Some(json!("dev"))),
            ("time", time),
        ]))
    });
    (subject, action, resource, context).prop_map(|(subject, action, resource, context)| {
        object(vec![
            ("subject", subject),
            ("action", action),
            ("resource", resource),
            ("context", context),
        ])
    })
}

fn parse_time(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

/// Is a waiver of `blocker` for `dataset` active at `now`, per the bundle data?
fn waived(
    data: &Value,
    dataset: &str,
    blocker: &str,
    now: chrono::DateTime<chrono::FixedOffset>,
) -> bool {
    data["kfm"]["waivers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| {
            w["dataset"] == dataset
                && w["waives"] == blocker
                && w["owner"].as_str().is_some_and(|s| !s.is_empty())
                && w["reason"].as_str().is_some_and(|s| !s.is_empty())
                && parse_time(&w["expires"]).is_some_and(|e| now < e)
        })
}

/// The platform's rules, written again in Rust: an allow must satisfy all.
fn check_allow(input: &Value, d: &Decision, data: &Value) -> Result<(), String> {
    let roles: Vec<&str> = match input["subject"]["roles"].as_array() {
        Some(a) => a.iter().filter_map(Value::as_str).collect(),
        None => return Err("allowed without a roles list".into()),
    };
    let has = |r: &str| roles.contains(&r);
    let kinds: BTreeSet<&str> = d.obligations.iter().map(Obligation::kind).collect();
    let now = parse_time(&input["context"]["time"]).ok_or("allowed without a valid time")?;
    match input["action"].as_str() {
        Some("audit") => {
            if !has("auditor") {
                return Err("audit read by a non-auditor".into());
            }
            if !kinds.contains("audit_durable") {
                return Err("audit read without audit_durable".into());
            }
            return Ok(());
        }
        Some("read") | Some("export") => {}
        other => return Err(format!("allowed unknown action {other:?}")),
    }
    let export = input["action"] == "export";
    let r = &input["resource"];
    let dataset = r["dataset"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("no dataset")?;
    if !matches!(
        r["zone"].as_str(),
        Some("published" | "processed" | "catalog")
    ) {
        return Err(format!("served from zone {}", r["zone"]));
    }
    let approved = r["dataset"].is_string()
        && input["subject"]["attributes"]["approved_access"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d.as_str() == Some(dataset)));
    let generalized = kinds.contains("generalize");
    match r["policy_label"].as_str() {
        Some("public") => {}
        Some("public_generalized") if generalized => {}
        Some("public_generalized") => return Err("public_generalized without generalize".into()),
        Some("restricted_sensitive_location") => {
            let precise_allowed = has("researcher") && approved;
            if !generalized && !precise_allowed {
                return Err("precise sensitive locations to an unapproved caller".into());
            }
            if !kinds.contains("audit_durable") {
                return Err("restricted read without audit_durable".into());
            }
        }
        Some("restricted") => {
            if !((has("researcher") || has("steward")) && approved) {
                return Err("restricted data to an unapproved caller".into());
            }
        }
        Some("internal") => {
            if !["admin", "auditor", "engineer", "steward"]
                .iter()
                .any(|s| has(s))
            {
                return Err("internal data to non-staff".into());
            }
        }
        Some("embargoed") => {
            let lifted = parse_time(&r["embargo_until"]).is_some_and(|t| now >= t);
            if !lifted && !waived(data, dataset, "embargo.active", now) {
                return Err("embargoed data before its date without a waiver".into());
            }
        }
        other => return Err(format!("allowed label {other:?}")),
    }
    let id = r["license"]["id"].as_str().unwrap_or("");
    let requires = data["kfm"]["licenses"][id]["attribution"] == true;
    let attributed = d.obligations.iter().any(|o| {
        matches!(o, Obligation::Attribution { license, text }
            if (license == id || license == "NOASSERTION") && Some(text.as_str()) == r["license"]["attribution"].as_str())
    });
    if requires && !attributed {
        return Err(format!("no attribution obligation under {id}"));
    }
    if export {
        let known = data["kfm"]["licenses"].get(id).is_some();
        if !known && !waived(data, dataset, "license.unknown", now) {
            return Err(format!("exported under unknown license {id:?}"));
        }
        if r["distribution"] == "metadata-only" {
            return Err("exported metadata-only data".into());
        }
        if !kinds.contains("audit_durable") {
            return Err("export without audit_durable".into());
        }
    }
    Ok(())
}

struct Setup {
    point: DecisionPoint,
    data: Value,
    justified: BTreeSet<Class>,
}

fn setup() -> Setup {
    let bundle = Bundle::load(&default_bundle_dir()).unwrap();
    let point = DecisionPoint::new(&bundle, Options::default()).unwrap();
    let mut justified = BTreeSet::new();
    for (_, f) in fixtures(&bundle).unwrap() {
        if f.expect.allow {
            let expected = Decision {
                allow: true,
                reason: f.expect.reason.clone(),
                obligations: f
                    .expect
                    .obligations
                    .iter()
                    .map(|o| kfm_policy::obligation::parse_obligation(o).unwrap())
                    .collect(),
            };
            justified.insert(class(&f.input, &expected));
        }
    }
    Setup {
        point,
        data: bundle.data().clone(),
        justified,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn nothing_is_allowed_that_a_fixture_does_not_justify(input in inputs()) {
        thread_local! { static SETUP: Setup = setup(); }
        SETUP.with(|s| {
            let d = s.point.decide(&input);
            if !d.allow {
                prop_assert!(d.obligations.is_empty(), "a deny carried obligations");
                return Ok(());
            }
            let c = class(&input, &d);
            prop_assert!(
                s.justified.contains(&c),
                "allow of class {c:?} that no fixture justifies, for {input}"
            );
            if let Err(e) = check_allow(&input, &d, &s.data) {
                prop_assert!(false, "{e}: {input} -> {d:?}");
            }
            Ok(())
        })?;
    }
}

#[test]
fn the_generator_reaches_allows_of_every_kind() {
    // Guard against a property that passes because nothing is ever allowed.
    let s = setup();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = inputs();
    let mut seen = BTreeSet::new();
    for _ in 0..4000 {
        let input = strategy.new_tree(&mut runner).unwrap().current();
        let d = s.point.decide(&input);
        if d.allow {
            seen.insert(d.reason.clone());
        }
    }
    for reason in [
        "read.public",
        "export.public",
        "read.public_generalized",
        "read.restricted_generalized",
        "read.restricted_precise",
        "read.internal_staff",
        "read.embargo_lifted",
        "audit.auditor",
    ] {
        assert!(
            seen.contains(reason),
            "no random input reached {reason}: {seen:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// The runtime evaluates with regorus's VM; `explain` and the Rego unit
    /// tests use its interpreter. On KFM's default bundle they must agree on
    /// every decision, random inputs included; where the interpreter fails
    /// (an error), the VM must deny.
    #[test]
    fn the_vm_and_the_interpreter_agree(input in inputs()) {
        thread_local! { static SETUP: Setup = setup(); }
        SETUP.with(|s| {
            let vm = s.point.evaluate(&input).decision;
            let interpreted = s.point.evaluate_with_interpreter(&input);
            if interpreted.decision.reason == kfm_policy::reasons::ENGINE_ERROR {
                prop_assert!(!vm.allow, "interpreter error {:?} but the VM allowed: {input}", interpreted.detail);
            } else {
                prop_assert_eq!(&vm, &interpreted.decision, "for {}", input);
            }
            Ok(())
        })?;
    }
}
