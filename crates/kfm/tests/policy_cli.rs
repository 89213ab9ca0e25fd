//! `kfm policy …` as a user and as CI drive it: parity between the test
//! runner and the runtime decision point, refusal of an unpinned or edited
//! bundle (exit 2, both digests printed), pinning, diff, signatures.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use kfm_policy::{Bundle, DecisionPoint, Options};
use predicates::prelude::*;

fn kfm(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("kfm").unwrap();
    c.current_dir(dir)
        .env_remove("KFM_WORKSPACE")
        .env_remove("KFM_POLICY_BUNDLE")
        .env_remove("KFM_WORKSPACE_ENVIRONMENT");
    c
}

fn repo_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy")
}

fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    kfm(dir.path()).args(["init", "ws"]).assert().success();
    let ws = dir.path().join("ws");
    (dir, ws)
}

fn json_out(c: &mut Command) -> (i32, serde_json::Value) {
    let out = c.output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

const PUBLIC_READ: &str = r#"{"subject": {"id": "u", "roles": ["public"], "attributes": {}},
 "action": "read",
 "resource": {"kind": "features", "dataset": "ks-places", "policy_label": "public",
              "zone": "published", "license": {"id": "CC0-1.0"}},
 "context": {"environment": "dev", "time": "2026-11-22T00:00:00Z"}}"#;

#[test]
fn init_installs_the_embedded_default_bundle_and_pins_it() {
    let (_d, ws) = workspace();
    let (_, installed) = json_out(kfm(&ws).args(["policy", "digest", "--format", "json"]));
    let (_, repo) = json_out(
        kfm(&ws)
            .args(["policy", "digest", "--format", "json"])
            .arg(repo_policy()),
    );
    assert_eq!(
        installed["digest"], repo["digest"],
        "crates/kfm/src/default_policy.rs is out of date with policy/"
    );
    let pins = std::fs::read_to_string(ws.join("environments/dev.toml")).unwrap();
    assert!(pins.contains(repo["digest"].as_str().unwrap()), "{pins}");
}

#[test]
fn fixtures_give_the_same_decisions_through_policy_test_and_the_runtime() {
    let dir = repo_policy();
    let (code, report) = json_out(kfm(&dir).args(["policy", "test", ".", "--format", "json"]));
    assert_eq!(code, 0, "{report}");
    let bundle = Bundle::load(&dir).unwrap();
    let runtime = DecisionPoint::new(&bundle, Options::default()).unwrap();
    let fixtures = kfm_policy::runner::fixtures(&bundle).unwrap();
    let cases: Vec<&serde_json::Value> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "fixture")
        .collect();
    assert_eq!(cases.len(), fixtures.len());
    assert!(fixtures.len() >= 50, "{}", fixtures.len());
    for ((file, f), case) in fixtures.iter().zip(cases) {
        assert_eq!(case["name"], format!("{file}: {}", f.name));
        let at_runtime = serde_json::to_value(runtime.decide(&f.input)).unwrap();
        assert_eq!(case["decision"], at_runtime, "{}", f.name);
    }
    assert!(
        report["cases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "rego")
    );
}

#[test]
fn the_runtime_refuses_an_edited_bundle_until_it_is_pinned() {
    let (_d, ws) = workspace();
    std::fs::write(ws.join("input.json"), PUBLIC_READ).unwrap();
    kfm(&ws)
        .args(["policy", "eval", "--input", "input.json"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("ALLOW  reason: read.public"));

    let (_, before) = json_out(kfm(&ws).args(["policy", "digest", "--format", "json"]));
    // One byte, in a comment: the policy means the same, but it is not the
    // pinned bundle any more.
    let rego = ws.join("policy/kfm/authz.rego");
    let text = std::fs::read_to_string(&rego).unwrap();
    std::fs::write(&rego, text.replacen("# KFM's", "#KFM's", 1)).unwrap();
    let (_, after) = json_out(kfm(&ws).args(["policy", "digest", "--format", "json"]));
    assert_ne!(before["digest"], after["digest"]);

    kfm(&ws)
        .args(["policy", "eval", "--input", "input.json"])
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(before["digest"].as_str().unwrap()))
        .stderr(predicate::str::contains(after["digest"].as_str().unwrap()))
        .stderr(predicate::str::contains("kfm policy pin --env dev"));

    kfm(&ws)
        .args(["policy", "pin", "--env", "dev"])
        .assert()
        .success()
        .stdout(predicate::str::contains("was sha256:"));
    let pins = std::fs::read_to_string(ws.join("environments/dev.toml")).unwrap();
    assert!(
        pins.starts_with("# Pins for the dev environment"),
        "comments kept: {pins}"
    );
    assert!(pins.contains(after["digest"].as_str().unwrap()));
    kfm(&ws)
        .args(["policy", "eval", "--input", "input.json"])
        .assert()
        .code(0);
    kfm(&ws)
        .args(["policy", "pin", "--env", "dev"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing changed"));

    // An environment that pins nothing refuses as well.
    kfm(&ws)
        .env("KFM_WORKSPACE_ENVIRONMENT", "stage")
        .args(["policy", "eval", "--input", "input.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pins no policy bundle digest"));
}

#[test]
fn eval_explains_a_deny() {
    let (_d, ws) = workspace();
    let input = PUBLIC_READ.replace(
        "\"public\",\n              \"zone\"",
        "\"internal\",\n              \"zone\"",
    );
    assert!(input.contains("internal"));
    std::fs::write(ws.join("input.json"), input).unwrap();
    kfm(&ws)
        .args(["policy", "eval", "--input", "input.json", "--explain"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "DENY  reason: internal.staff_only",
        ))
        .stdout(predicate::str::contains("data.kfm.authz.blocker "))
        .stdout(predicate::str::contains("kfm/authz.rego:"));
    kfm(&ws)
        .args(["policy", "eval", "--input", "missing.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.json"));
    std::fs::write(ws.join("bad.json"), "{\"subject\": ").unwrap();
    kfm(&ws)
        .args(["policy", "eval", "--input", "bad.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.json:1:"));
}

#[test]
fn an_expired_waiver_is_not_honoured_through_the_cli_runtime_path() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("policy");
    copy_dir(&repo_policy(), &bundle);
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    std::fs::write(
        bundle.join("kfm/data.yaml"),
        format!(
            "waivers:\n  - {{id: W-9, owner: o@x, reason: r, expires: \"{yesterday}\", dataset: ks-places, waives: license.unknown}}\n"
        ),
    )
    .unwrap();
    let input = PUBLIC_READ
        .replace("\"read\"", "\"export\"")
        .replace("CC0-1.0", "LicenseRef-Pending");
    std::fs::write(tmp.path().join("input.json"), input).unwrap();
    // --now: context.time is the current time, as the API will set it.
    kfm(tmp.path())
        .args([
            "policy",
            "eval",
            "--bundle",
            "policy",
            "--input",
            "input.json",
            "--now",
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("license.unknown"));
}

#[test]
fn policy_test_filters_fails_on_empty_writes_junit_and_fails_on_a_wrong_fixture() {
    let dir = repo_policy();
    let (code, r) =
        json_out(kfm(&dir).args(["policy", "test", ".", "--run", "export", "--format", "json"]));
    assert_eq!(code, 0);
    let cases = r["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    assert!(
        cases
            .iter()
            .all(|c| c["name"].as_str().unwrap().contains("export"))
    );

    kfm(&dir)
        .args([
            "policy",
            "test",
            ".",
            "--run",
            "no-such-case",
            "--fail-on-empty",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no policy test ran"));
    kfm(&dir)
        .args(["policy", "test", ".", "--run", "("])
        .assert()
        .code(2);

    let tmp = tempfile::tempdir().unwrap();
    let junit = tmp.path().join("report.xml");
    kfm(&dir)
        .args(["policy", "test", ".", "--coverage", "--junit"])
        .arg(&junit)
        .assert()
        .success()
        .stdout(predicate::str::contains("coverage:"))
        .stdout(predicate::str::contains("kfm/authz.rego"));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuites") && xml.contains("name=\"fixtures\""),
        "{xml}"
    );
    assert!(!xml.contains("<failure"));

    // A fixture that expects the wrong thing fails the run, saying what differs.
    let bundle = tmp.path().join("policy");
    copy_dir(&dir, &bundle);
    let reads = bundle.join("tests/reads.yaml");
    let text = std::fs::read_to_string(&reads).unwrap();
    std::fs::write(
        &reads,
        text.replacen(
            "\"reason\": \"read.public\"",
            "\"reason\": \"read.everything\"",
            1,
        ),
    )
    .unwrap();
    kfm(tmp.path())
        .args(["policy", "test", "policy", "--junit", "-"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("<failure"))
        .stdout(predicate::str::contains("expected `read.everything`"));

    std::fs::write(
        bundle.join("tests/broken.yaml"),
        "cases:\n  - name: x\n    inputs: {}\n",
    )
    .unwrap();
    kfm(tmp.path())
        .args(["policy", "test", "policy"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("broken.yaml"));
}

#[test]
fn diff_lists_every_decision_a_change_alters() {
    let tmp = tempfile::tempdir().unwrap();
    let new = tmp.path().join("new");
    copy_dir(&repo_policy(), &new);
    // The change under review: the default generalisation grid becomes
    // coarser (0.1 -> 0.2 degrees).
    let data = new.join("kfm/data.json");
    let text = std::fs::read_to_string(&data).unwrap();
    let changed = text.replacen("\"degrees\": 0.1", "\"degrees\": 0.2", 1);
    assert_ne!(text, changed);
    std::fs::write(&data, changed).unwrap();

    let bundle = Bundle::load(&repo_policy()).unwrap();
    let mut lines = String::new();
    for (_, f) in kfm_policy::runner::fixtures(&bundle).unwrap() {
        lines.push_str(&serde_json::to_string(&f.input).unwrap());
        lines.push('\n');
    }
    std::fs::write(tmp.path().join("inputs.jsonl"), &lines).unwrap();
    let (code, report) = json_out(
        kfm(tmp.path())
            .args([
                "policy",
                "diff",
                "--to",
                "new",
                "--inputs",
                "inputs.jsonl",
                "--format",
                "json",
                "--from",
            ])
            .arg(repo_policy()),
    );
    assert_eq!(code, 1);
    let changed = report["changed"].as_array().unwrap();
    assert!(changed.len() >= 5, "{report}");
    for c in changed {
        // Same answers, different obligations: exactly the default grid.
        assert_eq!(c["before"]["allow"], c["after"]["allow"]);
        assert_eq!(c["before"]["reason"], c["after"]["reason"]);
        let degrees = |d: &serde_json::Value| {
            d["obligations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["type"] == "generalize")
                .map(|o| o["degrees"].clone())
        };
        assert_eq!(degrees(&c["before"]), Some(serde_json::json!(0.1)));
        assert_eq!(degrees(&c["after"]), Some(serde_json::json!(0.2)));
        assert!(c["line"].as_u64().unwrap() > 0);
        assert!(c["input_digest"].as_str().unwrap().starts_with("sha256:"));
    }
    // The new bundle against itself: nothing changes; bad inputs: exit 2.
    let self_diff = |inputs: &str| {
        let mut c = kfm(tmp.path());
        c.args([
            "policy", "diff", "--from", "new", "--to", "new", "--inputs", inputs,
        ]);
        c
    };
    self_diff("inputs.jsonl")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("0 of"));
    std::fs::write(tmp.path().join("bad.jsonl"), "{}\nnot json\n").unwrap();
    self_diff("bad.jsonl")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.jsonl:2:"));
}

#[test]
fn a_signed_bundle_that_was_edited_is_refused_by_policy_test() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("policy");
    copy_dir(&repo_policy(), &bundle);
    std::fs::write(
        tmp.path().join("policy.key"),
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
    )
    .unwrap();
    kfm(tmp.path())
        .args(["policy", "sign", "policy", "--key", "file:policy.key"])
        .assert()
        .success();
    kfm(tmp.path())
        .args(["policy", "test", "policy"])
        .assert()
        .success();
    let (_, d) = json_out(kfm(tmp.path()).args(["policy", "digest", "policy", "--format", "json"]));
    assert!(d["signed_by"].is_string());

    let data = bundle.join("kfm/data.json");
    let text = std::fs::read_to_string(&data).unwrap();
    let edited = text.replacen("\"attribution\": false", "\"attribution\": true", 1);
    assert_ne!(text, edited);
    std::fs::write(&data, edited).unwrap();
    for args in [
        vec!["policy", "test", "policy"],
        vec!["policy", "digest", "policy"],
        vec![
            "policy",
            "eval",
            "--bundle",
            "policy",
            "--input",
            "policy/.manifest",
        ],
    ] {
        kfm(tmp.path())
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("signature check failed"));
    }
    // Re-signing is how an edit is accepted.
    kfm(tmp.path())
        .args(["policy", "sign", "policy", "--key", "file:policy.key"])
        .assert()
        .success();
    kfm(tmp.path())
        .args(["policy", "digest", "policy"])
        .assert()
        .success();
    kfm(tmp.path())
        .args(["policy", "sign", "policy", "--key", "hunter2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a reference"));
}
