//! The Promotion Contract, tried from every side: each gate with a failing
//! case and a cannot-evaluate case, each ending in quarantine with nothing
//! new under processed/, catalog/ or published/; determinism across stores;
//! rollback through the same gates; hand-edited pointers refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use kfm_core::{DatasetId, Digest, Signer};
use kfm_ledger::{Ledger, LedgerOptions, LedgerSigner, LedgerView, generate_key};
use kfm_pipeline::ingest::no_progress;
use kfm_pipeline::{
    Gate, IngestRequest, PolicyInfo, PromoteError, PromoteOutcome, PromoteRequest, RollbackRequest,
    Status, ingest, promote, rollback, verify_release,
};
use kfm_store::Store;
use tempfile::TempDir;

const CSV: &str = "name,lat,lng,kind\nA,38.5,-98.1,x\nB,39.0,-97.0,y\nC,37.5,-99.5,\n";

fn spec(id: &str, extra: &str) -> String {
    let defaults = [
        (
            "license",
            "license: {spdx: CC-BY-4.0, rights_holder: GeoNames, attribution: Contains data from GeoNames}",
        ),
        ("sensitivity", "sensitivity: {policy_label: public}"),
        ("qa", "qa: {min_features: 3, required_properties: [name]}"),
        (
            "publisher",
            "publisher: {name: P, url: https://example.org/}",
        ),
        (
            "source",
            "source: {uri: src.csv, format: csv, lat_column: lat, lon_column: lng}",
        ),
    ];
    let mut s =
        format!("id: {id}\ntitle: T\ndescription: D\ncontact: {{name: C, email: c@example.org}}\n");
    for (key, line) in defaults {
        if !extra.lines().any(|l| l.starts_with(&format!("{key}:"))) {
            s.push_str(line);
            s.push('\n');
        }
    }
    s.push_str(extra);
    s
}

struct Env {
    dir: TempDir,
    store: Store,
    ledger: Ledger,
    signer: Signer,
    verifier: String,
    spec_path: PathBuf,
    id: DatasetId,
}

fn policy() -> PolicyInfo {
    PolicyInfo {
        digest: Digest::of(b"test policy bundle"),
        revision: "test-1".into(),
        licenses: serde_json::json!({
            "CC0-1.0": {"attribution": false},
            "CC-BY-4.0": {"attribution": true},
        }),
    }
}

async fn env(spec_text: &str, source_name: &str, source: &[u8]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("datasets");
    std::fs::create_dir_all(&ds).unwrap();
    let id: DatasetId = spec_text
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("id: ")
        .parse()
        .unwrap();
    let spec_path = ds.join(format!("{id}.yaml"));
    std::fs::write(&spec_path, spec_text).unwrap();
    std::fs::write(ds.join(source_name), source).unwrap();
    let store = Store::open_local(&dir.path().join("store")).unwrap();
    ingest(
        &store,
        IngestRequest {
            spec_path: &spec_path,
            within: Some(dir.path()),
            actor: "tester".into(),
            progress: Box::new(|_| no_progress()),
        },
    )
    .await
    .unwrap();
    let (private, verifier) = generate_key("kfm-test").unwrap();
    let ls = LedgerSigner::from_key_text(&private).unwrap();
    let signer = Signer::new(ls.signing_key());
    let ledger = Ledger::open(store.audit(), ls, LedgerOptions::new("kfm.test/ledger"))
        .await
        .unwrap();
    Env {
        dir,
        store,
        ledger,
        signer,
        verifier,
        spec_path,
        id,
    }
}

fn today() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

struct Run<'a> {
    policy: Result<PolicyInfo, String>,
    signer: Result<&'a Signer, String>,
    ledger: Result<&'a Ledger, String>,
    actor: String,
    on_gate: &'a (dyn Fn(Gate) + Sync),
}

fn defaults(e: &Env) -> Run<'_> {
    Run {
        policy: Ok(policy()),
        signer: Ok(&e.signer),
        ledger: Ok(&e.ledger),
        actor: "tester".into(),
        on_gate: &|_| {},
    }
}

async fn run_with(e: &Env, r: Run<'_>) -> PromoteOutcome {
    try_run_with(e, r).await.unwrap()
}

async fn try_run_with(e: &Env, r: Run<'_>) -> Result<PromoteOutcome, PromoteError> {
    promote(PromoteRequest {
        store: &e.store,
        spec_path: &e.spec_path,
        dataset: &e.id,
        acquisition: None,
        actor: r.actor,
        policy: r.policy,
        signer: r.signer,
        ledger: r.ledger,
        now: today(),
        work_keep: chrono::Duration::days(7),
        on_gate: r.on_gate,
    })
    .await
}

async fn run(e: &Env) -> PromoteOutcome {
    run_with(e, defaults(e)).await
}

/// Every object under processed/, catalog/ and published/, with its digest.
/// The test ledger, loaded and verified (no guards: the tests own it).
async fn ledger_view(e: &Env) -> LedgerView {
    LedgerView::open(
        &e.store.audit(),
        &e.verifier,
        "kfm.test/ledger",
        &Default::default(),
    )
    .await
    .unwrap()
}

fn snapshot(e: &Env) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    let root = e.dir.path().join("store");
    for zone in ["processed", "catalog", "published"] {
        walk(&root, &root.join(zone), &mut out);
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Digest>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            // A run's record of itself (its claim on a version, made once
            // gates A-E pass, so that the number is never reused) is not a
            // release, nor part of one.
            let name = p.file_name().unwrap().to_string_lossy();
            let record = name == "claim.json"
                || name.starts_with("rollback-")
                || name.starts_with("aborted-")
                || rel.contains("/history/");
            if !record {
                out.insert(rel, Digest::of(&std::fs::read(&p).unwrap()));
            }
        }
    }
}

fn status_of(out: &PromoteOutcome, gate: Gate) -> Status {
    out.gates.iter().find(|g| g.gate == gate).unwrap().status
}

/// The run is quarantined, `gate` answered `want`, a report exists, and
/// nothing new appeared under processed/, catalog/ or published/ (but the
/// run's own record: see `walk`).
async fn assert_quarantined(
    e: &Env,
    out: &PromoteOutcome,
    before: &BTreeMap<String, Digest>,
    gate: Gate,
    want: Status,
) {
    assert!(!out.published, "{:#?}", out.gates);
    assert_eq!(status_of(out, gate), want, "{:#?}", out.gates);
    let key = out.quarantine_report.as_ref().unwrap();
    let report = e
        .store
        .quarantine()
        .get(key.strip_prefix("quarantine/").unwrap())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(v["run_id"], out.run_id.as_str());
    assert_eq!(
        &snapshot(e),
        before,
        "a failed run changed processed/catalog/published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_csv_is_published_with_all_gates_passing_and_verifies() {
    let e = env(&spec("ds-ok", ""), "src.csv", CSV.as_bytes()).await;
    let out = run(&e).await;
    assert!(out.published, "{:#?}", out.gates);
    assert!(out.gates.iter().all(|g| g.status == Status::Pass));
    assert_eq!(out.version_id, "ds-ok@v1");
    let view = ledger_view(&e).await;
    let r = verify_release(&e.store, &view, "ds-ok", &e.signer.verifying_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.manifest.version, 1);
    assert_eq!(r.manifest.policy.digest, policy().digest.to_string());
    // The receipt (F) and the manifest (G) are both in the ledger.
    assert_eq!(view.size(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_a_fails_on_tampered_raw_bytes_and_cannot_evaluate_without_them() {
    let e = env(&spec("ds-a", ""), "src.csv", CSV.as_bytes()).await;
    let before = snapshot(&e);
    let raw_dir = e.dir.path().join("store/raw/ds-a");
    let hex = std::fs::read_dir(&raw_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let source = hex.join("source.csv");
    let mut perms = std::fs::metadata(&source).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&source, perms).unwrap();
    std::fs::write(&source, CSV.replace("38.5", "38.6")).unwrap();
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::A, Status::Fail).await;
    assert!(out.gates[0].reasons[0].contains("no longer holds the acquired bytes"));

    std::fs::remove_file(&source).unwrap();
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::A, Status::CannotEvaluate).await;
    // Without data, the gates that need it cannot decide either.
    assert_eq!(status_of(&out, Gate::D), Status::CannotEvaluate);
    assert_eq!(status_of(&out, Gate::E), Status::CannotEvaluate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_a_fails_on_invalid_geojson_naming_the_feature() {
    let doc = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"name":"a"},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}}]}"#;
    let e = env(
        &spec(
            "ds-geo",
            "source: {uri: src.geojson, format: geojson}\nqa: {}\n",
        ),
        "src.geojson",
        doc.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::A, Status::Fail).await;
    let all = out.gates[0].reasons.join("\n");
    assert!(all.contains("feature 0: ring 0 is not closed"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_b_fails_on_unknown_license_and_cannot_evaluate_without_policy() {
    let e = env(
        &spec(
            "ds-b",
            "license: {spdx: NOASSERTION, rights_holder: unknown}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::B, Status::Fail).await;

    // A license the policy does not know is a failure too.
    let e = env(
        &spec(
            "ds-b2",
            "license: {spdx: MIT, rights_holder: R, attribution: by R}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::B, Status::Fail).await;
    assert!(out.gates[1].reasons[0].contains("not known to the policy bundle"));

    let e = env(&spec("ds-b4", ""), "src.csv", CSV.as_bytes()).await;
    let before = snapshot(&e);
    let mut r = defaults(&e);
    r.policy = Err("bundle digest differs from the pin".into());
    let out = run_with(&e, r).await;
    assert_quarantined(&e, &out, &before, Gate::B, Status::CannotEvaluate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_c_fails_before_an_embargo_ends_and_cannot_evaluate_sensitive_data_it_cannot_read() {
    let e = env(
        &spec(
            "ds-c",
            "sensitivity: {policy_label: embargoed, embargo_until: 2027-01-01}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::C, Status::Fail).await;
    assert!(out.gates[2].reasons[0].contains("embargoed until 2027-01-01"));

    let e = env(
        &spec("ds-c2", "sensitivity: {policy_label: quarantine}\n"),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::C, Status::Fail).await;

    let e = env(
        &spec(
            "ds-c3",
            "sensitivity: {policy_label: restricted_sensitive_location, generalization: {method: grid, degrees: 0.5}}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let raw_dir = e.dir.path().join("store/raw/ds-c3");
    let hex = std::fs::read_dir(&raw_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(hex.join("source.csv")).unwrap();
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::C, Status::CannotEvaluate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_c_publishes_a_generalized_derivative_recorded_as_its_own_activity() {
    let e = env(
        &spec(
            "ds-sens",
            "sensitivity: {policy_label: restricted_sensitive_location, generalization: {method: h3, resolution: 5}}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let out = run(&e).await;
    assert!(out.published, "{:#?}", out.gates);
    let g = out
        .artifacts
        .iter()
        .find(|a| a.path.ends_with("generalized.geojson"))
        .unwrap();
    assert_eq!(g.policy_label.as_deref(), Some("public_generalized"));
    let bytes = e
        .store
        .processed()
        .get(g.path.strip_prefix("processed/").unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("coordinateUncertaintyInMeters"));
    assert!(text.contains("dataGeneralizations"));
    // No precise coordinate of the source survives in the derivative.
    for precise in ["38.5", "-98.1", "37.5", "-99.5"] {
        assert!(
            !text.contains(&format!("{precise},")) && !text.contains(&format!("{precise}]")),
            "{precise} leaked"
        );
    }
    let prov = e.store.catalog().get("ds-sens/v1/prov.json").await.unwrap();
    let prov: serde_json::Value = serde_json::from_slice(&prov).unwrap();
    let act = prov["activity"]
        .as_object()
        .unwrap()
        .values()
        .find(|a| a["prov:type"] == "kfm:Generalization")
        .expect("a generalization activity");
    assert!(
        act["prov:label"]
            .as_str()
            .unwrap()
            .contains("H3 resolution 5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_d_fails_on_a_bad_publisher_iri_and_cannot_evaluate_without_extent() {
    let e = env(
        &spec("ds-d", "publisher: {name: P, url: not a url}\n"),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::D, Status::Fail).await;
    assert!(
        out.gates[3]
            .reasons
            .join(" ")
            .contains("not an absolute http(s) IRI")
    );

    let doc = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"a"},"geometry":null}]}"#;
    let e = env(
        &spec(
            "ds-d2",
            "source: {uri: src.geojson, format: geojson}\nqa: {}\n",
        ),
        "src.geojson",
        doc.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::D, Status::CannotEvaluate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_e_fails_below_thresholds_and_cannot_evaluate_ratios_over_nothing() {
    let e = env(
        &spec(
            "ds-e",
            "qa: {min_features: 10, max_null_ratio: {kind: 0.0}}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::E, Status::Fail).await;
    let reasons = out.gates[4].reasons.join("\n");
    assert!(
        reasons.contains("min_features: 3 features, at least 10"),
        "{reasons}"
    );
    assert!(
        reasons.contains("max_null_ratio.kind: 1/3 null"),
        "{reasons}"
    );
    let v: serde_json::Value = serde_json::from_slice(
        &e.store
            .quarantine()
            .get(
                out.quarantine_report
                    .as_ref()
                    .unwrap()
                    .strip_prefix("quarantine/")
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["qa"]["feature_count"], 3,
        "the QA report is stored with the run"
    );

    let e = env(
        &spec("ds-e2", "qa: {max_null_ratio: {name: 0.1}}\n"),
        "src.csv",
        b"name,lat,lng\n",
    )
    .await;
    let before = snapshot(&e);
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::E, Status::CannotEvaluate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_f_fails_when_the_ledger_refuses_and_cannot_evaluate_without_ledger_or_key() {
    let e = env(&spec("ds-f", ""), "src.csv", CSV.as_bytes()).await;
    let before = snapshot(&e);
    // A receipt the ledger refuses (over its 64 KiB entry limit).
    let mut r = defaults(&e);
    r.actor = "x".repeat(70_000);
    let out = run_with(&e, r).await;
    assert_quarantined(&e, &out, &before, Gate::F, Status::Fail).await;
    assert!(
        out.gates[5].reasons[0].contains("refused"),
        "{:?}",
        out.gates[5]
    );

    // Without a ledger or a key nothing can be recorded: the run refuses
    // before it writes anything, and the dataset is not quarantined.
    let before = snapshot(&e);
    for (ledger_missing, why) in [(true, "not available"), (false, "cannot be signed")] {
        let mut r = defaults(&e);
        if ledger_missing {
            r.ledger = Err("no writer can be reached".into());
        } else {
            r.signer = Err("no signing key configured".into());
        }
        match try_run_with(&e, r).await {
            Err(err @ PromoteError::Ledger(_)) => {
                assert!(err.to_string().contains(why), "{err}");
                assert!(err.to_string().starts_with("cannot evaluate"), "{err}");
            }
            other => panic!("expected cannot evaluate, got {other:?}"),
        }
        assert_eq!(snapshot(&e), before, "nothing may be written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_g_loses_to_a_concurrent_promotion_and_cannot_evaluate_a_broken_pointer() {
    let e = env(&spec("ds-g", ""), "src.csv", CSV.as_bytes()).await;
    assert!(run(&e).await.published);
    let v1 = snapshot(&e);

    // Another promotion moves the pointer while this run is at gate G.
    let store = e.store.clone();
    let handle = tokio::runtime::Handle::current();
    let mover = move |g: Gate| {
        if g == Gate::G {
            let store = store.clone();
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    // Different bytes, as another run's pointer would be.
                    let p = store.published().read("ds-g.json").await.unwrap().unwrap();
                    let mut moved = p.bytes.to_vec();
                    moved.push(b'\n');
                    store
                        .published()
                        .compare_and_swap("ds-g.json", Some(&p.version), Bytes::from(moved))
                        .await
                        .unwrap();
                })
            });
        }
    };
    let mut r = defaults(&e);
    r.on_gate = &mover;
    let out = run_with(&e, r).await;
    // Only the other run's pointer changed: this run wrote nothing.
    let mut want = v1.clone();
    let mut moved = std::fs::read(e.dir.path().join("store/published/ds-g.json")).unwrap();
    assert_eq!(moved.pop(), Some(b'\n'));
    assert_eq!(Digest::of(&moved), v1["published/ds-g.json"]);
    moved.push(b'\n');
    want.insert("published/ds-g.json".into(), Digest::of(&moved));
    assert_quarantined(&e, &out, &want, Gate::G, Status::Fail).await;
    assert!(out.gates[6].reasons[0].contains("moved during this run"));

    // A hand-edited pointer: nothing is released on top of it.
    let p = e
        .store
        .published()
        .read("ds-g.json")
        .await
        .unwrap()
        .unwrap();
    let edited = String::from_utf8(p.bytes.to_vec())
        .unwrap()
        .replace("\"ledger_index\": 1", "\"ledger_index\": 0");
    e.store
        .published()
        .compare_and_swap("ds-g.json", Some(&p.version), Bytes::from(edited.clone()))
        .await
        .unwrap();
    let before = snapshot(&e);
    let view = ledger_view(&e).await;
    let err = verify_release(&e.store, &view, "ds-g", &e.signer.verifying_key())
        .await
        .unwrap_err();
    assert!(err.contains("ledger entry 0"), "{err}");
    // A blunter edit (another version number) fails in the store alone.
    let p = e
        .store
        .published()
        .read("ds-g.json")
        .await
        .unwrap()
        .unwrap();
    e.store
        .published()
        .compare_and_swap(
            "ds-g.json",
            Some(&p.version),
            Bytes::from(edited.replace("\"version\": 1", "\"version\": 2")),
        )
        .await
        .unwrap();
    let before = {
        let mut b = before;
        b.insert(
            "published/ds-g.json".into(),
            snapshot(&e)["published/ds-g.json"],
        );
        b
    };
    let out = run(&e).await;
    assert_quarantined(&e, &out, &before, Gate::G, Status::CannotEvaluate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_acquisition_gives_identical_artifacts_in_two_fresh_stores() {
    let a = env(&spec("ds-det", ""), "src.csv", CSV.as_bytes()).await;
    let b = env(&spec("ds-det", ""), "src.csv", CSV.as_bytes()).await;
    let (oa, ob) = (run(&a).await, run(&b).await);
    assert!(oa.published && ob.published);
    let digests = |o: &PromoteOutcome| {
        o.artifacts
            .iter()
            .map(|x| (x.path.clone(), x.digest))
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&oa), digests(&ob));
    assert_ne!(oa.run_id, ob.run_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_passes_the_gates_and_refuses_a_tampered_version() {
    let e = env(&spec("ds-r", ""), "src.csv", CSV.as_bytes()).await;
    assert!(run(&e).await.published);
    assert_eq!(run(&e).await.version_id, "ds-r@v2");
    let back = |to| RollbackRequest {
        store: &e.store,
        dataset: &e.id,
        to,
        actor: "tester".into(),
        policy: Ok(policy()),
        signer: Ok(&e.signer),
        ledger: Ok(&e.ledger),
        now: today(),
        work_keep: chrono::Duration::days(7),
        on_gate: &|_| {},
    };
    let out = rollback(back(1)).await.unwrap();
    assert!(out.rolled_back, "{:#?}", out.gates);
    let view = ledger_view(&e).await;
    let r = verify_release(&e.store, &view, "ds-r", &e.signer.verifying_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.pointer.version, 1);
    assert_eq!(r.pointer.operation, "rollback");

    // Tamper with v2's data: rolling back to it is refused at gate A.
    let f = e
        .dir
        .path()
        .join("store/processed/ds-r/v2/features.geojson");
    let mut perms = std::fs::metadata(&f).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&f, perms).unwrap();
    std::fs::write(&f, b"{}").unwrap();
    let before = snapshot(&e);
    let out = rollback(back(2)).await.unwrap();
    assert!(!out.rolled_back);
    assert_eq!(out.gates[0].status, Status::Fail);
    assert_eq!(snapshot(&e), before);
    assert!(rollback(back(9)).await.is_err(), "no such version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_publishes_the_catalog_and_no_data() {
    let e = env(
        &spec(
            "ds-meta",
            "license: {spdx: CC-BY-4.0, rights_holder: GeoNames, attribution: Contains data from GeoNames, distribution: metadata-only}\n",
        ),
        "src.csv",
        CSV.as_bytes(),
    )
    .await;
    let out = run(&e).await;
    assert!(out.published, "{:#?}", out.gates);
    assert!(out.artifacts.is_empty());
    let snap = snapshot(&e);
    assert!(
        !snap.keys().any(|k| k.starts_with("processed/")),
        "no data artifact: {snap:?}"
    );
    for doc in [
        "dcat.jsonld",
        "stac/collection.json",
        "prov.json",
        "release.dsse.json",
    ] {
        assert!(
            snap.contains_key(&format!("catalog/ds-meta/v1/{doc}")),
            "{doc}"
        );
    }
    let view = ledger_view(&e).await;
    let r = verify_release(&e.store, &view, "ds-meta", &e.signer.verifying_key())
        .await
        .unwrap()
        .unwrap();
    assert!(r.manifest.artifacts.is_empty());
}
