//! `kfm promote`, `rollback`, `quarantine` and `status` as a user drives
//! them: exit codes, a crash at random points, a hand-edited pointer, and
//! the generated catalog checked by validators that are not ours.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;

const SAMPLES: &[(&str, &str)] = &[
    (
        "ks-places.yaml",
        include_str!("../../../data/samples/ks-places/dataset.yaml"),
    ),
    (
        "ks-places.csv",
        include_str!("../../../data/samples/ks-places/ks-places.csv"),
    ),
    (
        "ks-markers-unlicensed.yaml",
        include_str!("../../../data/samples/ks-markers-unlicensed/dataset.yaml"),
    ),
    (
        "ks-markers-unlicensed.csv",
        include_str!("../../../data/samples/ks-markers-unlicensed/ks-markers-unlicensed.csv"),
    ),
    (
        "ks-sites-synthetic.yaml",
        include_str!("../../../data/samples/ks-sites-synthetic/dataset.yaml"),
    ),
    (
        "ks-sites-synthetic.csv",
        include_str!("../../../data/samples/ks-sites-synthetic/ks-sites-synthetic.csv"),
    ),
];

fn kfm(ws: &Path) -> Command {
    let mut c = Command::cargo_bin("kfm").unwrap();
    c.current_dir(ws)
        .env_remove("KFM_WORKSPACE")
        .env_remove("KFM_STORE_URL")
        .env("KFM_ACTOR", "tester");
    c
}

/// A workspace with three samples in datasets/, each ingested.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    kfm(dir.path()).args(["init", "ws"]).assert().success();
    for (name, text) in SAMPLES {
        std::fs::write(ws.join("datasets").join(name), text).unwrap();
    }
    for (name, _) in SAMPLES.iter().filter(|(n, _)| n.ends_with(".yaml")) {
        kfm(&ws)
            .args(["ingest", &format!("datasets/{name}")])
            .assert()
            .success();
    }
    (dir, ws)
}

fn status_json(ws: &Path) -> (i32, serde_json::Value) {
    let out = kfm(ws)
        .args(["status", "--format", "json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code().unwrap_or(-1), v)
}

fn dataset<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap()
}

#[test]
fn promote_publishes_quarantines_and_reports_with_documented_exit_codes() {
    let (_d, ws) = workspace();
    kfm(&ws)
        .args(["promote", "ks-places"])
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("PUBLISHED ks-places@v1").and(predicate::str::contains(
                "G  release manifest & pointer   pass",
            )),
        );
    let out = kfm(&ws)
        .args(["promote", "ks-markers-unlicensed", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["published"], false);
    assert_eq!(v["gates"][1]["status"], "fail");
    let run_id = v["run_id"].as_str().unwrap().to_owned();
    assert!(
        ws.join(format!(
            "store/quarantine/ks-markers-unlicensed/{run_id}/report.json"
        ))
        .is_file()
    );
    assert!(!ws.join("store/processed/ks-markers-unlicensed").exists());
    assert!(
        !ws.join("store/published/ks-markers-unlicensed.json")
            .exists()
    );

    kfm(&ws)
        .args(["quarantine", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains(&run_id).and(predicate::str::contains("B fail")));
    kfm(&ws)
        .args(["quarantine", "show", &run_id])
        .assert()
        .success()
        .stdout(predicate::str::contains("license.spdx is NOASSERTION"));
    kfm(&ws)
        .args(["quarantine", "show", "no-such-run"])
        .assert()
        .code(2);

    // Cannot start: unknown dataset, bad id, bad acquisition digest.
    kfm(&ws)
        .args(["promote", "no-such-dataset"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no-such-dataset.yaml"));
    kfm(&ws).args(["promote", "Bad_Id"]).assert().code(2);
    kfm(&ws)
        .args(["promote", "ks-places", "--acquisition", "sha256:00"])
        .assert()
        .code(2);
    let zero = format!("sha256:{}", "0".repeat(64));
    kfm(&ws)
        .args(["promote", "ks-places", "--acquisition", &zero])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("has no acquisition"));

    let (code, s) = status_json(&ws);
    assert_eq!(code, 0);
    assert_eq!(dataset(&s, "ks-places")["stage"], "published");
    assert_eq!(dataset(&s, "ks-places")["release"]["verified"], true);
    assert_eq!(dataset(&s, "ks-markers-unlicensed")["stage"], "quarantined");
    assert_eq!(
        dataset(&s, "ks-markers-unlicensed")["last_run"]["run_id"],
        run_id.as_str()
    );
    kfm(&ws).args(["ledger", "verify"]).assert().success();

    // `catalog validate` re-verifies a version without changing anything.
    kfm(&ws)
        .args(["catalog", "validate", "ks-places"])
        .assert()
        .success()
        .stdout(predicate::str::contains("ks-places@v1: valid"));
    let stac = ws.join("store/catalog/ks-places/v1/stac/collection.json");
    let mut perms = std::fs::metadata(&stac).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&stac, perms).unwrap();
    let text = std::fs::read_to_string(&stac).unwrap();
    std::fs::write(&stac, text.replace("\"stac_version\"", "\"stac_versio\"")).unwrap();
    kfm(&ws)
        .args(["catalog", "validate", "ks-places", "--version", "v1"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "catalog/ks-places/v1/stac/collection.json has digest",
        ));
    kfm(&ws)
        .args(["catalog", "validate", "ks-markers-unlicensed"])
        .assert()
        .code(2);
}

#[test]
fn a_hand_edited_release_pointer_is_detected_and_rollback_restores_a_verified_one() {
    let (_d, ws) = workspace();
    kfm(&ws).args(["promote", "ks-places"]).assert().success();
    kfm(&ws).args(["promote", "ks-places"]).assert().success();
    let ptr = ws.join("store/published/ks-places.json");
    let text = std::fs::read_to_string(&ptr).unwrap();
    assert!(text.contains("ks-places@v2"));

    // Point at v1 by hand, keeping v2's manifest digest: detected.
    std::fs::write(
        &ptr,
        text.replace("\"version\": 2", "\"version\": 1")
            .replace("ks-places@v2", "ks-places@v1")
            .replace("v2/release", "v1/release"),
    )
    .unwrap();
    let (code, s) = status_json(&ws);
    assert_eq!(code, 1);
    let r = &dataset(&s, "ks-places")["release"];
    assert_eq!(r["verified"], false);
    assert!(r["problem"].as_str().unwrap().contains("digest"), "{r}");
    kfm(&ws)
        .arg("status")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("release: DOES NOT VERIFY"));

    // Pointing at another ledger entry: detected through the ledger.
    std::fs::write(
        &ptr,
        text.replace("\"ledger_index\": 3", "\"ledger_index\": 1"),
    )
    .unwrap();
    let (code, s) = status_json(&ws);
    assert_eq!(code, 1, "{s}");
    assert!(
        dataset(&s, "ks-places")["release"]["problem"]
            .as_str()
            .unwrap()
            .contains("ledger entry 1"),
        "{s}"
    );

    // A promotion refuses to build on it (gate G cannot evaluate) …
    kfm(&ws)
        .args(["promote", "ks-places"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("does not verify"));
    // … and a rollback, through the gates, restores a verified pointer.
    kfm(&ws)
        .args(["rollback", "ks-places", "--to", "v1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("ROLLED BACK"));
    let (code, s) = status_json(&ws);
    assert_eq!(code, 0, "{s}");
    assert_eq!(
        dataset(&s, "ks-places")["release"]["version_id"],
        "ks-places@v1"
    );
    assert_eq!(dataset(&s, "ks-places")["release"]["operation"], "rollback");
    assert_eq!(
        dataset(&s, "ks-places")["last_run"]["outcome"],
        "rolled back"
    );
    kfm(&ws)
        .args(["rollback", "ks-places", "--to", "v9"])
        .assert()
        .code(2);
    kfm(&ws).args(["ledger", "verify"]).assert().success();
}

/// SIGKILL at random points of a promotion, 30 rounds: the pointer always
/// names a whole version (old or new) and the ledger always verifies.
#[test]
fn a_promotion_killed_at_random_points_never_leaves_a_half_release() {
    let (_d, ws) = workspace();
    kfm(&ws).args(["promote", "ks-places"]).assert().success();
    let bin = assert_cmd::cargo::cargo_bin("kfm");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut versions_seen = std::collections::BTreeSet::new();
    for round in 0..30 {
        let mut child = std::process::Command::new(&bin)
            .args(["promote", "ks-places"])
            .current_dir(&ws)
            .env_remove("KFM_WORKSPACE")
            .env_remove("KFM_STORE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(next() % 400_000));
        let _ = child.kill();
        let _ = child.wait();
        let (code, s) = status_json(&ws);
        let r = &dataset(&s, "ks-places")["release"];
        assert_eq!(code, 0, "round {round} (seed {seed}): {s}");
        assert_eq!(r["verified"], true, "round {round} (seed {seed}): {r}");
        versions_seen.insert(r["version_id"].as_str().unwrap().to_owned());
        kfm(&ws).args(["ledger", "verify"]).assert().success();
    }
    // After all that, a promotion still completes and verifies.
    kfm(&ws).args(["promote", "ks-places"]).assert().success();
    let (code, _) = status_json(&ws);
    assert_eq!(code, 0);
    eprintln!("versions the pointer named across rounds: {versions_seen:?}");
}

fn require_external() -> bool {
    std::env::var("KFM_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn have(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The catalog of a published sensitive dataset, read by other people's
/// tools: stac-validator (offline, fed the same STAC 1.1.0 schemas through
/// --schema-map), the `prov` package, and rdflib's JSON-LD parser.
#[test]
fn the_catalog_triplet_passes_external_validators() {
    let tools =
        have("stac-validator", &["--help"]) && have("python3", &["-c", "import prov, rdflib"]);
    if !tools {
        assert!(
            !require_external(),
            "KFM_REQUIRE_SERVICES=1 but stac-validator / prov / rdflib are missing: run scripts/test, which installs them"
        );
        eprintln!(
            "skipped: stac-validator, prov and rdflib are not installed (scripts/test installs them)"
        );
        return;
    }
    let (_d, ws) = workspace();
    kfm(&ws)
        .args(["promote", "ks-sites-synthetic"])
        .assert()
        .success();
    let cat = ws.join("store/catalog/ks-sites-synthetic/v1");
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kfm-pipeline/schemas");
    let base = "https://schemas.stacspec.org/v1.1.0";
    let mut cmd = std::process::Command::new("stac-validator");
    cmd.arg("validate")
        .arg(cat.join("stac/collection.json"))
        .arg("--core")
        .arg("-s")
        .arg(format!(
            "{base}/collection-spec/json-schema/collection.json"
        ))
        .arg(schemas.join("stac-1.1.0/collection.json"));
    for f in [
        "bands",
        "basics",
        "common",
        "data-values",
        "datetime",
        "instrument",
        "item",
        "licensing",
        "provider",
    ] {
        cmd.arg("-s")
            .arg(format!("{base}/item-spec/json-schema/{f}.json"))
            .arg(schemas.join(format!("stac-1.1.0/{f}.json")));
    }
    for f in ["Feature", "Geometry"] {
        cmd.arg("-s")
            .arg(format!("https://geojson.org/schema/{f}.json"))
            .arg(schemas.join(format!("geojson/{f}.json")));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"valid_stac\": true"),
        "stac-validator: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let script = r#"
import sys, prov, rdflib
doc = prov.read(sys.argv[1], format="json")
kinds = {type(r).__name__ for r in doc.get_records()}
assert "ProvEntity" in kinds and "ProvActivity" in kinds and "ProvAgent" in kinds, kinds
g = rdflib.Graph()
g.parse(sys.argv[2], format="json-ld")
DCAT = rdflib.Namespace("http://www.w3.org/ns/dcat#")
urls = sorted(str(o) for o in g.objects(None, DCAT.downloadURL))
assert len(urls) == 4, urls
for u in urls:
    assert u.startswith("file://") and "/processed/ks-sites-synthetic/v1/" in u, u
print("ok", len(list(doc.get_records())), len(g))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(cat.join("prov.json"))
        .arg(cat.join("dcat.jsonld"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prov/rdflib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Links resolve to files that exist, with the digests the catalog gives.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        assert!(line.starts_with("ok"), "{line}");
    }
}

/// Every `#<digits>` temporary file under a zone of the store.
fn temporaries(ws: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for z in [
        "raw",
        "processed",
        "catalog",
        "quarantine",
        "published",
        "audit",
    ] {
        walk(&ws.join("store").join(z), &mut out);
    }
    out
}

/// Every run receipt in the ledger: (run id, operation, outcome, version id).
fn receipts(ws: &Path) -> Vec<(String, String, String, String)> {
    use base64::Engine;
    let out = kfm(ws)
        .args(["--format", "json", "ledger", "tail", "-n", "1000000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut v = Vec::new();
    for r in rows {
        let Ok(env) = serde_json::from_str::<serde_json::Value>(r["entry"].as_str().unwrap())
        else {
            continue;
        };
        if env["payloadType"] != "application/vnd.in-toto+json" {
            continue;
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        let s: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let p = &s["predicate"];
        v.push((
            p["run_id"].as_str().unwrap().to_owned(),
            p["operation"].as_str().unwrap().to_owned(),
            p["outcome"].as_str().unwrap().to_owned(),
            p["version_id"].as_str().unwrap_or("").to_owned(),
        ));
    }
    v
}

/// Kill points across a promotion (and a rollback): after the version
/// claim, after the receipt (F), before and after each artifact write,
/// after the manifest's ledger entry, either side of the pointer swap, 22
/// rounds over two datasets. After every kill: the pointer names a whole,
/// verified version; no version number is ever claimed or receipted twice;
/// status names an interrupted run as interrupted (never "published") with
/// what it left, and the next run records it as aborted in the ledger; a
/// never-released version cannot be rolled back to; no temporary file is
/// left in a zone.
#[test]
fn kill_points_across_a_promotion_leave_nothing_half_visible() {
    let (_d, ws) = workspace();
    for ds in ["ks-places", "ks-sites-synthetic"] {
        kfm(&ws).args(["promote", ds]).assert().success();
    }
    let bin = assert_cmd::cargo::cargo_bin("kfm");
    let points = |writes: usize| {
        let mut p = vec!["after-claim".to_owned(), "after-receipt".to_owned()];
        for i in [0, 1, writes / 2, writes - 1] {
            p.push(format!("before-write-{i}"));
            p.push(format!("after-write-{i}"));
        }
        p.extend(["after-manifest", "before-swap", "after-swap"].map(String::from));
        p
    };
    // ks-places: 2 data artifacts, 4 catalog documents, receipt, manifest;
    // the sensitive sample adds its generalised derivative (2 more).
    let mut rounds: Vec<(&str, &str, String)> = Vec::new();
    for p in points(8).into_iter().take(11) {
        rounds.push(("promote", "ks-places", p));
    }
    for p in points(10).into_iter().skip(2).take(9) {
        rounds.push(("promote", "ks-sites-synthetic", p));
    }
    rounds.push(("rollback", "ks-places", "before-swap".into()));
    rounds.push(("rollback", "ks-places", "after-swap".into()));
    assert!(rounds.len() >= 22);
    let mut interrupted_before: Option<(String, String)> = None;
    let mut never_released: Vec<(String, u64)> = Vec::new();
    for (round, (op, ds, point)) in rounds.iter().enumerate() {
        let args: Vec<&str> = if *op == "promote" {
            vec!["promote", ds]
        } else {
            vec!["rollback", ds, "--to", "v1"]
        };
        let out = std::process::Command::new(&bin)
            .args(&args)
            .current_dir(&ws)
            .env_remove("KFM_WORKSPACE")
            .env_remove("KFM_STORE_URL")
            .env("KFM_FAULT_POINT", point)
            .output()
            .unwrap();
        assert!(
            out.status.code().is_none(),
            "round {round} ({op} {ds} at {point}): the run was not killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let what = format!("round {round} ({op} {ds} killed at {point})");

        // The run before this one, if it was interrupted, is now recorded
        // as aborted (this run settled it before its own gates).
        if let Some((run, d)) = interrupted_before.take_if(|(_, d)| d == ds) {
            let recorded = receipts(&ws)
                .into_iter()
                .any(|(r, _, outcome, _)| r == run && outcome == "aborted");
            assert!(
                recorded,
                "{what}: the interrupted run {run} of {d} was not recorded as aborted"
            );
        }

        let (code, s) = status_json(&ws);
        assert_eq!(code, 0, "{what}: {s}");
        let d = dataset(&s, ds);
        assert_eq!(d["release"]["verified"], true, "{what}: {}", d["release"]);
        let last = &d["last_run"];
        let swapped = point == "after-swap";
        if swapped {
            let want = if *op == "promote" {
                "published"
            } else {
                "rolled back"
            };
            assert_eq!(last["outcome"], want, "{what}: {last}");
        } else {
            assert_eq!(last["outcome"], "interrupted", "{what}: {last}");
            let interrupted = d["interrupted"].as_array().unwrap();
            let run = last["run_id"].as_str().unwrap().to_owned();
            assert!(
                interrupted.iter().any(|i| i["run_id"] == run.as_str()),
                "{what}: {d}"
            );
            if *op == "promote" {
                let v = last["version"].as_u64().unwrap();
                assert_ne!(
                    d["release"]["version_id"],
                    format!("{ds}@v{v}"),
                    "{what}: the pointer names a version its run never released"
                );
                never_released.push((ds.to_string(), v));
            }
            if interrupted_before.is_none() {
                interrupted_before = Some((run, ds.to_string()));
            }
        }
        let tmp = temporaries(&ws);
        assert!(
            tmp.is_empty(),
            "{what}: temporary files left in zones: {tmp:?}"
        );
        kfm(&ws).args(["ledger", "verify"]).assert().success();
    }
    // One more clean run per dataset records the last interrupted run.
    for ds in ["ks-places", "ks-sites-synthetic"] {
        kfm(&ws).args(["promote", ds]).assert().success();
    }
    // No version number was claimed or receipted twice.
    let mut seen = std::collections::BTreeMap::new();
    for (run, op, outcome, vid) in receipts(&ws) {
        if op == "promote" && outcome == "gates-passed" {
            let prev = seen.insert(vid.clone(), run.clone());
            assert!(
                prev.is_none(),
                "{vid} has two gates-passed receipts: {prev:?} and {run}"
            );
        }
    }
    // A never-released version is never restored, and says why.
    for (ds, v) in &never_released {
        kfm(&ws)
            .args(["rollback", ds, "--to", &format!("v{v}")])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "that a release pointer ever named",
            ));
    }
    let (code, s) = status_json(&ws);
    assert_eq!(code, 0);
    for ds in ["ks-places", "ks-sites-synthetic"] {
        let d = dataset(&s, ds);
        assert!(
            d["interrupted"].as_array().is_none_or(|a| a.is_empty()),
            "{ds}: every interrupted run has been recorded as aborted: {d}"
        );
    }
    assert!(temporaries(&ws).is_empty());
}
