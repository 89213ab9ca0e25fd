//! `kfm infra check` as CI drives it: exit codes, every output format in one
//! run, byte-identical reruns, secrets masked everywhere, and fail-closed
//! parsing.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn kfm(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("kfm").unwrap();
    c.current_dir(dir).env_remove("KFM_WORKSPACE");
    c
}

const AWS_KEY: &str = "AKIAQYLPMN5HHHFPZAM2";
const PASSWORD: &str = "Zq8#vR2!pL9xW4tK";

fn tree(dir: &Path) {
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("k8s")).unwrap();
    std::fs::create_dir_all(t.join("app")).unwrap();
    std::fs::create_dir_all(t.join(".git")).unwrap();
    std::fs::write(
        t.join("k8s/secret.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{x: y}}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: {PASSWORD}\n"
        ),
    )
    .unwrap();
    std::fs::write(t.join("k8s/sealed.yaml"), "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata: {name: db}\nspec:\n  encryptedData:\n    password: AgBy3i4OJSWK+PiTySYZZA==\n").unwrap();
    std::fs::write(
        t.join("app/settings.env"),
        format!("AWS_ACCESS_KEY_ID={AWS_KEY}\nREGION=us-east-1\n"),
    )
    .unwrap();
    std::fs::write(t.join("app/clean.txt"), "nothing to see\n").unwrap();
    std::fs::write(t.join("app/blob.bin"), [0u8, 1, 2, 3, 0, 65]).unwrap();
    // Never descended into.
    std::fs::write(t.join(".git/config"), format!("token={AWS_KEY}\n")).unwrap();
}

#[test]
fn findings_in_every_format_deterministic_and_masked() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let run = |suffix: &str| {
        kfm(dir.path())
            .args(["infra", "check", "tree", "--format", "json"])
            .args(["--output", &format!("sarif=out{suffix}.sarif")])
            .args(["--output", &format!("junit=out{suffix}.xml")])
            .args(["--output", &format!("human=out{suffix}.txt")])
            .assert()
            .code(1)
            .get_output()
            .stdout
            .clone()
    };
    let first = run("1");
    let second = run("2");
    assert_eq!(first, second, "JSON differs between runs");
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    assert_eq!(
        read("out1.sarif"),
        read("out2.sarif"),
        "SARIF differs between runs"
    );
    assert_eq!(read("out1.xml"), read("out2.xml"));

    let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
    let found: Vec<(String, String, u64)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_owned(),
                f["rule"].as_str().unwrap().to_owned(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("tree/app/settings.env".into(), "KFM-SEC-002".into(), 1),
            ("tree/k8s/secret.yaml".into(), "KFM-K8S-001".into(), 10),
            ("tree/k8s/secret.yaml".into(), "KFM-SEC-008".into(), 11),
        ]
    );
    assert_eq!(v["binary_files_skipped"], 1);

    let sarif: serde_json::Value = serde_json::from_slice(&read("out1.sarif")).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["results"].as_array().unwrap().len(), 3);
    let r0 = &sarif["runs"][0]["results"][0];
    assert_eq!(
        r0["locations"][0]["physicalLocation"]["region"]["startLine"],
        1
    );
    let idx = r0["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(
        sarif["runs"][0]["tool"]["driver"]["rules"][idx]["id"],
        r0["ruleId"]
    );

    // No output carries a secret.
    for f in ["out1.sarif", "out1.xml", "out1.txt"] {
        let text = String::from_utf8(read(f)).unwrap();
        assert!(
            !text.contains(AWS_KEY) && !text.contains(PASSWORD),
            "{f} leaks"
        );
    }
    let text = String::from_utf8(first).unwrap();
    assert!(!text.contains(AWS_KEY) && !text.contains(PASSWORD));
    assert!(
        String::from_utf8(read("out1.txt"))
            .unwrap()
            .contains("fix: ")
    );
}

#[test]
fn clean_trees_pass_and_broken_input_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("ok.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    )
    .unwrap();
    kfm(dir.path())
        .args(["infra", "check", "t"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("0 findings"));

    std::fs::write(t.join("bad.yaml"), "a: b\nc: [d, e\nf: g\n").unwrap();
    kfm(dir.path())
        .args(["infra", "check", "t"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("t/bad.yaml:").and(predicate::str::contains("does not parse")),
        );
    std::fs::write(
        t.join("bad.yaml"),
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  x: {{ .Values.x }}\n",
    )
    .unwrap();
    kfm(dir.path())
        .args(["infra", "check", "t"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "t/bad.yaml:4: unrendered template",
        ));
    std::fs::remove_file(t.join("bad.yaml")).unwrap();

    kfm(dir.path())
        .args(["infra", "check", "t", "--output", "pdf=x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("use human, json, sarif or junit"));
    kfm(dir.path())
        .args(["infra", "check", "no-such-dir"])
        .assert()
        .code(2);
}

#[test]
fn gitleaks_rule_files_add_rules_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("a.txt"), "x = kfm_tok_abcdefghijklmnopqrstuvwx\n").unwrap();
    std::fs::write(
        dir.path().join("gitleaks.toml"),
        "[[rules]]\nid = \"kfm-token\"\nregex = '''kfm_tok_[a-z0-9]{24}'''\nkeywords = [\"kfm_tok_\"]\n",
    )
    .unwrap();
    kfm(dir.path())
        .args(["infra", "check", "t"])
        .assert()
        .code(0);
    kfm(dir.path())
        .args(["infra", "check", "t", "--rules", "gitleaks.toml"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("GITLEAKS-kfm-token"));
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[rules]]\nid = \"x\"\nregex = '('\n",
    )
    .unwrap();
    kfm(dir.path())
        .args(["infra", "check", "t", "--rules", "bad.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid regex"));
}
