//! The events KFM announces match the schemas committed under
//! `contracts/events/`, and those schemas refuse what they must.

use kfm_pipeline::records::{RELEASE_MOVED, RELEASE_MOVED_SCHEMA, ReleasePointer, release_moved};
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("../../../contracts/events/kfm.release.moved.v1.json");

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap()
}

fn pointer() -> ReleasePointer {
    ReleasePointer {
        kind: "kfm.ReleasePointer".into(),
        dataset: "ks-places".into(),
        version: 2,
        version_id: "ks-places@v2".into(),
        manifest: "catalog/ks-places/v2/release.dsse.json".into(),
        manifest_digest: format!("sha256:{}", "ab".repeat(32)),
        ledger_index: 41,
        ledger_entry_digest: format!("sha256:{}", "ab".repeat(32)),
        operation: "promote".into(),
        moved_at: "2026-12-02T18:00:00.123456Z".into(),
        run_id: Some("run-1".into()),
    }
}

#[test]
fn the_release_moved_event_is_a_cloudevent_its_schema_accepts() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    // The schema names the type it describes, and the event names it.
    assert_eq!(schema["$id"], RELEASE_MOVED_SCHEMA);
    assert_eq!(schema["title"], RELEASE_MOVED);
    let p = pointer();
    let bytes = serde_json::to_vec_pretty(&p).unwrap();
    let ev: Value = serde_json::from_slice(&release_moved(&p, &bytes).unwrap()).unwrap();
    let v = validator();
    let errors: Vec<String> = v.iter_errors(&ev).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{ev:#}");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], RELEASE_MOVED);
    assert_eq!(ev["dataschema"], RELEASE_MOVED_SCHEMA);
    // Its identity is the pointer's: the same move announced twice is the
    // same event, another move another.
    let again: Value = serde_json::from_slice(&release_moved(&p, &bytes).unwrap()).unwrap();
    assert_eq!(ev["id"], again["id"]);
    let mut q = p.clone();
    q.ledger_index = 42;
    let other_bytes = serde_json::to_vec_pretty(&q).unwrap();
    let other: Value = serde_json::from_slice(&release_moved(&q, &other_bytes).unwrap()).unwrap();
    assert_ne!(ev["id"], other["id"]);
}

/// One way to spoil an event.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn the_schema_refuses_each_malformed_event() {
    let p = pointer();
    let bytes = serde_json::to_vec_pretty(&p).unwrap();
    let good: Value = serde_json::from_slice(&release_moved(&p, &bytes).unwrap()).unwrap();
    let v = validator();
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "no id",
            Box::new(|e| drop(e.as_object_mut().unwrap().remove("id"))),
        ),
        ("id not a digest", Box::new(|e| e["id"] = json!("1"))),
        (
            "CloudEvents 0.3",
            Box::new(|e| e["specversion"] = json!("0.3")),
        ),
        (
            "another type",
            Box::new(|e| e["type"] = json!("kfm.release.moved.v2")),
        ),
        (
            "another schema",
            Box::new(|e| e["dataschema"] = json!("urn:x")),
        ),
        (
            "no time",
            Box::new(|e| drop(e.as_object_mut().unwrap().remove("time"))),
        ),
        (
            "a path as dataset",
            Box::new(|e| e["data"]["dataset"] = json!("../etc")),
        ),
        (
            "upper case dataset",
            Box::new(|e| e["subject"] = json!("KS-places")),
        ),
        ("version 0", Box::new(|e| e["data"]["version"] = json!(0))),
        (
            "negative index",
            Box::new(|e| e["data"]["ledger_index"] = json!(-1)),
        ),
        (
            "unknown operation",
            Box::new(|e| e["data"]["operation"] = json!("delete")),
        ),
        (
            "an extra field",
            Box::new(|e| e["data"]["coordinates"] = json!([1, 2])),
        ),
        (
            "an extra attribute",
            Box::new(|e| e["token"] = json!("secret")),
        ),
        ("data as a string", Box::new(|e| e["data"] = json!("{}"))),
    ];
    for (what, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!v.is_valid(&bad), "accepted: {what}");
    }
}
