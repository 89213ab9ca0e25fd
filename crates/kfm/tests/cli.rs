//! The command line as a user drives it: exit codes, messages, and what is
//! (and is not) left in the store afterwards.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

const PLACES_SPEC: &str = include_str!("../../../data/samples/ks-places/dataset.yaml");
const PLACES_CSV: &str = include_str!("../../../data/samples/ks-places/ks-places.csv");

fn kfm(ws: &Path) -> Command {
    let mut c = Command::cargo_bin("kfm").unwrap();
    c.current_dir(ws)
        .env_remove("KFM_WORKSPACE")
        .env_remove("KFM_STORE_URL")
        .env("KFM_ACTOR", "tester");
    c
}

/// A fresh workspace with the ks-places spec and source in datasets/.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    kfm(dir.path()).args(["init", "ws"]).assert().success();
    std::fs::write(ws.join("datasets/ks-places.yaml"), PLACES_SPEC).unwrap();
    std::fs::write(ws.join("datasets/ks-places.csv"), PLACES_CSV).unwrap();
    (dir, ws)
}

/// Every file under `dir`, relative, sorted (empty if `dir` is absent).
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn init_creates_a_workspace_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    kfm(dir.path())
        .args(["init", "w"])
        .assert()
        .success()
        .stdout(predicate::str::contains("created  kfm.toml"));
    let w = dir.path().join("w");
    for p in ["kfm.toml", "environments/dev.toml", "datasets", "store"] {
        assert!(w.join(p).exists(), "{p} missing");
    }
    // The development ledger key: private (0600), and kfm.toml holds only its path.
    let key = std::fs::read_to_string(w.join("keys/ledger.key")).unwrap();
    assert!(key.starts_with("PRIVATE+KEY+kfm.local/dev+"), "{key}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.join("keys/ledger.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "key file mode {mode:o}");
    }
    let toml = std::fs::read_to_string(w.join("kfm.toml")).unwrap();
    assert!(toml.contains("key = \"file:keys/ledger.key\""));
    assert!(
        // PRIVATE+KEY+<name>+<hash>+<base64>: the key material is the
        // fifth field whole (base64 may itself hold '+').
        !toml.contains(key.trim().splitn(5, '+').nth(4).unwrap()),
        "the key leaked into kfm.toml"
    );
    let signer = kfm_ledger::LedgerSigner::from_key_text(&key).unwrap();
    assert_eq!(
        signer.verifier_key(),
        std::fs::read_to_string(w.join("keys/ledger.pub"))
            .unwrap()
            .trim()
    );

    let snapshot = || -> Vec<_> {
        ["kfm.toml", "environments/dev.toml", "keys/ledger.key"]
            .iter()
            .map(|p| {
                let meta = std::fs::metadata(w.join(p)).unwrap();
                (std::fs::read(w.join(p)).unwrap(), meta.modified().unwrap())
            })
            .collect()
    };
    let before = snapshot();
    kfm(dir.path())
        .args(["init", "w"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("already initialised")
                .and(predicate::str::contains("nothing changed")),
        );
    let after = snapshot();
    assert_eq!(before, after);
}

#[test]
fn a_literal_secret_in_kfm_toml_is_refused_naming_the_key() {
    let (_d, ws) = workspace();
    let toml = std::fs::read_to_string(ws.join("kfm.toml")).unwrap();
    assert!(toml.contains("key = \"file:keys/ledger.key\""));
    let literal = toml.replace(
        "key = \"file:keys/ledger.key\"",
        "key = \"3q2+7w==deadbeefdeadbeef\"",
    );
    std::fs::write(ws.join("kfm.toml"), literal).unwrap();
    kfm(&ws)
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "signing.key: literal secret refused",
        ));
    // init on that workspace refuses too, and writes nothing.
    kfm(&ws).args(["init", "."]).assert().code(2);
}

#[test]
fn ingest_is_idempotent_and_new_bytes_make_a_new_acquisition() {
    let (_d, ws) = workspace();
    let out = kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    let digest = kfm_core::Digest::of(PLACES_CSV.as_bytes());
    assert!(out.contains(&digest.to_string()), "{out}");
    let object = ws
        .join("store/raw/ks-places")
        .join(digest.hex())
        .join("source.csv");
    assert_eq!(std::fs::read(&object).unwrap(), PLACES_CSV.as_bytes());

    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ws.join("store/raw/ks-places")
                .join(digest.hex())
                .join("acquisition.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["digest"], digest.to_string());
    assert_eq!(record["size"], PLACES_CSV.len());
    assert_eq!(record["actor"], "tester");
    assert_eq!(record["tool"]["name"], "kfm");
    assert!(
        record["source_uri"]
            .as_str()
            .unwrap()
            .ends_with("datasets/ks-places.csv")
    );

    let raw_before = files_under(&ws.join("store/raw"));
    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("unchanged").and(predicate::str::contains("nothing written")),
        );
    assert_eq!(files_under(&ws.join("store/raw")), raw_before);

    std::fs::write(
        ws.join("datasets/ks-places.csv"),
        format!("{PLACES_CSV}Extra,38.0,-97.0,US,KS,001\n"),
    )
    .unwrap();
    kfm(&ws)
        .args(["--format", "json", "ingest", "datasets/ks-places.yaml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"outcome\": \"new\""));
    let status = kfm(&ws)
        .args(["status", "--format", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let ds = &status["datasets"][0];
    assert_eq!(ds["id"], "ks-places");
    assert_eq!(ds["stage"], "raw");
    assert_eq!(ds["acquisitions"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_exits_2_names_the_problem_and_writes_nothing() {
    let (_d, ws) = workspace();
    // Missing source.
    std::fs::remove_file(ws.join("datasets/ks-places.csv")).unwrap();
    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("ks-places.csv cannot be read"));
    // Missing spec.
    kfm(&ws)
        .args(["ingest", "datasets/nope.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope.yaml"));
    // Bad spec: file, line and column.
    std::fs::write(ws.join("datasets/ks-places.csv"), PLACES_CSV).unwrap();
    std::fs::write(
        ws.join("datasets/ks-places.yaml"),
        PLACES_SPEC.replace("title:", "titel:"),
    )
    .unwrap();
    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "datasets/ks-places.yaml:3:1: unknown field `titel`",
        ));
    // A scheme ingest cannot fetch.
    std::fs::write(
        ws.join("datasets/ks-places.yaml"),
        PLACES_SPEC.replace("uri: ks-places.csv", "uri: https://example.org/x.csv"),
    )
    .unwrap();
    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("https://"));
    // An empty source.
    std::fs::write(ws.join("datasets/ks-places.yaml"), PLACES_SPEC).unwrap();
    std::fs::write(ws.join("datasets/ks-places.csv"), "").unwrap();
    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("empty"));
    // No workspace.
    let elsewhere = tempfile::tempdir().unwrap();
    kfm(elsewhere.path())
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("kfm init"));

    assert!(
        files_under(&ws.join("store/raw")).is_empty(),
        "something was written under raw/"
    );
}

#[test]
fn spec_check_reports_every_invalid_spec_and_exits_1() {
    let (_d, ws) = workspace();
    kfm(&ws)
        .args(["spec", "check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("ok     "));
    std::fs::write(
        ws.join("datasets/broken.yaml"),
        PLACES_SPEC.replace("spdx: CC-BY-4.0", "spdx: CC-BY-9.9"),
    )
    .unwrap();
    std::fs::write(ws.join("datasets/dup.yaml"), PLACES_SPEC).unwrap();
    kfm(&ws).args(["spec", "check"]).assert().code(1).stdout(
        predicate::str::contains(
            "broken.yaml:22:9: license.spdx: unknown SPDX license id \"CC-BY-9.9\"",
        )
        .and(predicate::str::contains(
            "dataset id ks-places is already declared by",
        ))
        .and(predicate::str::contains("3 spec(s) checked, 2 invalid")),
    );
    kfm(&ws)
        .args(["spec", "check", "no/such/path"])
        .assert()
        .code(2);
}

/// SIGKILL an ingest of a large file mid-way: nothing appears under raw/,
/// and the next ingest succeeds with the right digest.
#[cfg(unix)]
#[test]
fn an_ingest_killed_mid_way_leaves_nothing_under_raw() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    let (_d, ws) = workspace();
    let big = ws.join("datasets/ks-places.csv");
    let mut hasher = kfm_core::Hasher::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        f.write_all(PLACES_CSV.as_bytes()).unwrap();
        hasher.update(PLACES_CSV.as_bytes());
        let body = PLACES_CSV.split_once('\n').unwrap().1.repeat(64);
        while hasher.len() < 768 << 20 {
            f.write_all(body.as_bytes()).unwrap();
            hasher.update(body.as_bytes());
        }
    }
    let want = hasher.finish();

    let bin = assert_cmd::cargo::cargo_bin("kfm");
    let mut child = std::process::Command::new(&bin)
        .args(["ingest", "datasets/ks-places.yaml"])
        .current_dir(&ws)
        .env_remove("KFM_WORKSPACE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until bytes are being staged, then kill.
    let start = Instant::now();
    loop {
        let staged: u64 = files_under(&ws.join("store/work"))
            .iter()
            .filter_map(|f| std::fs::metadata(ws.join("store/work").join(f)).ok())
            .map(|m| m.len())
            .sum();
        if staged > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ingest finished before it could be killed; use a larger file"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ingest never started staging"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the ingest completed before the kill; the test proved nothing"
    );
    assert!(
        files_under(&ws.join("store/raw")).is_empty(),
        "partial data under raw/: {:?}",
        files_under(&ws.join("store/raw"))
    );

    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .success()
        .stdout(predicate::str::contains(want.to_string()));
    let raw = files_under(&ws.join("store/raw"));
    assert_eq!(raw.len(), 2, "{raw:?}");
    let stored = ws
        .join("store/raw/ks-places")
        .join(want.hex())
        .join("source.csv");
    assert_eq!(
        std::fs::metadata(&stored).unwrap().len(),
        std::fs::metadata(&big).unwrap().len()
    );
}

#[test]
fn up_ingests_the_samples_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    kfm(dir.path())
        .args(["up", "--dir", "demo", "--no-serve"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("ingested ks-counties")
                .and(predicate::str::contains("ingested ks-places"))
                .and(predicate::str::contains("PUBLISHED ks-counties@v1"))
                .and(predicate::str::contains("PUBLISHED ks-places@v1"))
                .and(predicate::str::contains("PUBLISHED ks-sites-synthetic@v1"))
                .and(predicate::str::contains(
                    "QUARANTINED: report quarantine/ks-markers-unlicensed/",
                )),
        );
    kfm(dir.path())
        .args(["up", "--dir", "demo", "--no-serve"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("unchanged ks-counties")
                .and(predicate::str::contains("unchanged ks-places"))
                .and(predicate::str::contains("ks-places: already published"))
                .and(predicate::str::contains("pinned for dev"))
                .and(predicate::str::contains(" 0 failed")),
        );
    // `up` loads the policy as a runtime does: an unpinned edit stops it.
    let rego = dir.path().join("demo/policy/kfm/authz.rego");
    let mut text = std::fs::read_to_string(&rego).unwrap();
    text.push('\n');
    std::fs::write(&rego, text).unwrap();
    kfm(dir.path())
        .args(["up", "--dir", "demo", "--no-serve"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "differs from the digest pinned for `dev`",
        ));
}

/// The same workspace on an S3 store chosen by `KFM_STORE_URL`, with
/// credentials only from `AWS_*` variables: ingest, idempotence and status
/// work end to end.
#[test]
fn ingest_into_an_s3_store_configured_from_the_environment() {
    let Some(s3) = kfm_store::testing::s3_settings("") else {
        return;
    };
    let endpoint = s3.endpoint.clone().unwrap_or_default();
    let (_d, ws) = workspace();
    let prefix = format!("cli-{}", std::process::id());
    let (bucket, key_id, secret) = (
        s3.bucket.clone(),
        s3.access_key_id.clone().unwrap_or_default(),
        s3.secret_access_key.clone().unwrap_or_default(),
    );
    let s3 = |c: &mut Command| {
        c.env("KFM_STORE_URL", format!("s3://{bucket}/{prefix}"))
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", &key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
    };
    let mut c = kfm(&ws);
    s3(&mut c);
    c.args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("ingested ks-places"));
    let mut c = kfm(&ws);
    s3(&mut c);
    c.args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("unchanged"));
    let mut c = kfm(&ws);
    s3(&mut c);
    let out = c
        .args(["status", "--format", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(status["store"].as_str().unwrap().starts_with("s3://"));
    assert_eq!(
        status["datasets"][0]["acquisitions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The whole truth path on the bucket: promotion (write-once creates,
    // ledger tiles and checkpoint, pointer CAS by If-Match), then status
    // verifies the release end to end and the ledger verifies.
    let mut c = kfm(&ws);
    s3(&mut c);
    c.args(["promote", "ks-places"])
        .assert()
        .success()
        .stdout(predicate::str::contains("PUBLISHED ks-places@v1"));
    let mut c = kfm(&ws);
    s3(&mut c);
    let out = c
        .args(["status", "--format", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        status["datasets"][0]["release"]["verified"], true,
        "{status}"
    );
    let mut c = kfm(&ws);
    s3(&mut c);
    c.args(["ledger", "verify"]).assert().success();
    // Nothing went to the local directory store.
    assert!(files_under(&ws.join("store")).is_empty());

    // Without allowing plain http the store refuses to open, saying how to fix it.
    let mut c = kfm(&ws);
    s3(&mut c);
    c.env_remove("AWS_ALLOW_HTTP")
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("AWS_ALLOW_HTTP=true"));
}

/// A global option a command would ignore is refused (exit 2) rather than
/// silently dropped; set for the session (KFM_WORKSPACE), it is not.
#[test]
fn global_options_a_command_would_ignore_are_refused() {
    let (_d, ws) = workspace();
    let refused: &[&[&str]] = &[
        &["--workspace", ".", "init", "other"],
        &["--workspace", ".", "up", "--dir", "x", "--no-serve"],
        &["--workspace", ".", "openapi"],
        &["--workspace", ".", "infra", "mode"],
        &[
            "--workspace",
            ".",
            "spec",
            "check",
            "datasets/ks-places.yaml",
        ],
        &["--workspace", ".", "policy", "digest", "policy"],
        &["--format", "json", "serve"],
    ];
    for args in refused {
        kfm(&ws).args(*args).assert().code(2).stderr(
            predicate::str::contains("is not used here")
                .or(predicate::str::contains("is not available here")),
        );
    }
    assert!(!ws.join("other").exists() && !ws.join("x").exists());
    // The same commands with options they use, and KFM_WORKSPACE for the
    // session: accepted.
    kfm(&ws)
        .env("KFM_WORKSPACE", &ws)
        .args(["--format", "json", "infra", "mode"])
        .assert()
        .code(predicate::in_iter([0, 1]));
    kfm(&ws)
        .args(["--workspace", ".", "--format", "json", "status"])
        .assert()
        .success();
}

/// A source outside the workspace needs --allow-outside-workspace; bytes
/// acquired before that are not the newest say how to promote them.
#[test]
fn ingest_refuses_sources_outside_the_workspace_and_says_how_to_promote_older_bytes() {
    let (d, ws) = workspace();
    let outside = d.path().join("elsewhere.csv");
    std::fs::write(&outside, PLACES_CSV).unwrap();
    let spec = PLACES_SPEC.replace("uri: ks-places.csv", &format!("uri: {}", outside.display()));
    assert_ne!(spec, PLACES_SPEC, "the sample's source line changed");
    std::fs::write(ws.join("datasets/outside.yaml"), &spec).unwrap();
    kfm(&ws)
        .args(["ingest", "datasets/outside.yaml"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("is outside the workspace")
                .and(predicate::str::contains("--allow-outside-workspace")),
        );
    assert!(files_under(&ws.join("store/raw")).is_empty());
    kfm(&ws)
        .args([
            "ingest",
            "datasets/outside.yaml",
            "--allow-outside-workspace",
        ])
        .assert()
        .success();

    // Newer bytes (the last place dropped), then the older ones again.
    let mut lines: Vec<&str> = PLACES_CSV.lines().collect();
    lines.pop();
    std::fs::write(ws.join("datasets/ks-places.csv"), lines.join("\n") + "\n").unwrap();
    kfm(&ws)
        .args(["ingest", "datasets/ks-places.yaml"])
        .assert()
        .success();
    std::fs::write(&outside, PLACES_CSV).unwrap();
    let out = kfm(&ws)
        .args([
            "ingest",
            "datasets/outside.yaml",
            "--allow-outside-workspace",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "not ks-places's newest acquisition",
        ))
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let cmd = text
        .lines()
        .find_map(|l| l.split("to promote these: ").nth(1))
        .unwrap()
        .to_owned();
    assert!(
        cmd.starts_with("kfm promote ks-places --acquisition sha256:"),
        "{cmd}"
    );
    let json = kfm(&ws)
        .args([
            "--format",
            "json",
            "ingest",
            "datasets/outside.yaml",
            "--allow-outside-workspace",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["newest"], false);
    assert_eq!(v["promote_with"], cmd.as_str());
}
