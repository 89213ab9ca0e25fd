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

/// A report's findings as `file:line rule`, in report order.
fn finding_ids(report: &serde_json::Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{} {}",
                f["file"].as_str().unwrap(),
                f["line"],
                f["rule"].as_str().unwrap()
            )
        })
        .collect()
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kfm-infra/tests/fixtures")
}

/// The deliberately broken tree: at least one violation per rule, and
/// exactly the findings listed in expected-findings.txt, in every run.
#[test]
fn fixtures_fail_with_exactly_the_expected_findings() {
    let out = tempfile::tempdir().unwrap();
    let run = |n: u32| {
        kfm(&fixtures())
            .args([
                "infra",
                "check",
                "broken",
                "--waivers",
                "broken/waivers.yaml",
                "--format",
                "json",
            ])
            .arg("--output")
            .arg(format!(
                "sarif={}",
                out.path().join(format!("{n}.sarif")).display()
            ))
            .arg("--output")
            .arg(format!(
                "junit={}",
                out.path().join(format!("{n}.xml")).display()
            ))
            .assert()
            .code(1)
            .get_output()
            .stdout
            .clone()
    };
    let first = run(1);
    assert_eq!(first, run(2), "JSON differs between two runs");
    let read = |f: &str| std::fs::read(out.path().join(f)).unwrap();
    assert_eq!(
        read("1.sarif"),
        read("2.sarif"),
        "SARIF differs between two runs"
    );
    assert_eq!(
        read("1.xml"),
        read("2.xml"),
        "JUnit differs between two runs"
    );

    let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
    let got = finding_ids(&v);
    let want: Vec<String> = std::fs::read_to_string(fixtures().join("expected-findings.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want);
    // Every rule of the catalogue fires at least once.
    for r in v["rules"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        assert!(
            got.iter().any(|g| g.ends_with(&format!(" {id}"))),
            "no fixture violates {id}"
        );
    }
    // The waiver excused the ephemeral container only; the expired one
    // excused nothing; the stale one is reported.
    let waived: Vec<_> = v["waived"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["finding"]["file"].as_str().unwrap())
        .collect();
    assert_eq!(waived, vec!["broken/k8s/ephemeral.yaml"]);
    assert_eq!(
        v["unused_waivers"][0]["target"],
        "broken/terraform/legacy/**"
    );

    // SARIF is valid against the SARIF 2.1.0 schema, and waived findings
    // are suppressed results, not dropped ones.
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sarif-2.1.0-rtm.5.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap();
    let sarif: serde_json::Value = serde_json::from_slice(&read("1.sarif")).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&sarif)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "SARIF invalid: {errors:?}");
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), want.len() + 1);
    assert_eq!(
        results
            .iter()
            .filter(|r| r.get("suppressions").is_some())
            .count(),
        1
    );
    // The schema check itself can fail.
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["level"] = serde_json::json!("fatal");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn what_cannot_be_evaluated_exits_2_naming_file_and_line() {
    for (file, says) in [
        (
            "unknown-field.yaml",
            "unevaluable/unknown-field.yaml:13:11: unknown field spec.template.spec.containers.0.securityContex",
        ),
        (
            "template.yaml",
            "unevaluable/template.yaml:4: unrendered template",
        ),
        (
            "cilium.yaml",
            "unevaluable/cilium.yaml:2: cannot model CiliumNetworkPolicy",
        ),
        (
            "broken.yaml",
            "unevaluable/broken.yaml:5:1: YAML does not parse",
        ),
        (
            "broken.tf",
            "unevaluable/broken.tf:2:11: HCL does not parse",
        ),
        (
            "bad-operator.yaml",
            "unknown label selector operator \"Matches\"",
        ),
        // Kustomizations the gate cannot render faithfully.
        (
            "kustomize/name-prefix",
            "unevaluable/kustomize/name-prefix/kustomization.yaml:5: cannot render this kustomization: namePrefix",
        ),
        (
            "kustomize/patch-nowhere",
            "unevaluable/kustomize/patch-nowhere/kustomization.yaml:6: cannot render this kustomization: the patch's target (kind=Deployment, name=shopp) matches no resource",
        ),
        (
            "kustomize/remote",
            "unevaluable/kustomize/remote/kustomization.yaml:4: cannot render this kustomization: remote resource",
        ),
        (
            "kustomize/typo-in-patch",
            "unevaluable/kustomize/typo-in-patch/kustomization.yaml:6: cannot render this kustomization: after this change, the object from unevaluable/kustomize/app.yaml:1 is not valid",
        ),
        (
            "kustomize/helm",
            "unevaluable/kustomize/helm/kustomization.yaml:5: cannot render this kustomization: helmCharts",
        ),
    ] {
        kfm(&fixtures())
            .args(["infra", "check", &format!("unevaluable/{file}")])
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::contains(says));
    }
    // A malformed waiver file stops the run before anything is judged.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.yaml"),
        "waivers:\n  - rule: KFM-K8S-002\n    target: x\n",
    )
    .unwrap();
    kfm(&fixtures())
        .args(["infra", "check", "broken", "--waivers"])
        .arg(dir.path().join("w.yaml"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("waiver file"));
}

/// Overlays are rendered and judged: a base that passes as committed fails
/// when an overlay's patches undo it, each finding pointing at the change
/// that causes it; a benign overlay adds nothing; patch files are judged
/// inside what they patch, never as objects of their own.
#[test]
fn kustomize_overlays_are_rendered_and_findings_point_at_the_change() {
    let out = kfm(&fixtures())
        .args(["infra", "check", "overlays", "--format", "json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let got = finding_ids(&v);
    let k = "overlays/bad/kustomization.yaml";
    let want: Vec<String> = [
        // images: newTag latest
        format!("{k}:7 KFM-K8S-009"),
        // the JSON 6902 patch to runAsUser 0
        format!("{k}:13 KFM-K8S-004"),
        // the privileged sidecar (strategic merge from debug-sidecar.yaml)
        format!("{k}:24 KFM-K8S-002"),
        format!("{k}:24 KFM-K8S-003"),
        format!("{k}:24 KFM-K8S-004"),
        format!("{k}:24 KFM-K8S-005"),
        format!("{k}:24 KFM-K8S-006"),
        format!("{k}:24 KFM-K8S-009"),
        // the default deny, deleted by `$patch: delete`
        "overlays/base/namespace.yaml:4 KFM-NET-001".into(),
        "overlays/base/namespace.yaml:4 KFM-NET-002".into(),
    ]
    .to_vec();
    assert_eq!(got, want);
    let messages: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(messages[1].contains("container shop runs as user 0"));
    assert!(messages[1].contains("from overlays/base/app.yaml:1, as changed here"));
    assert!(messages[8].ends_with("as rendered by overlays/bad/kustomization.yaml"));
    // Every kustomization is rendered, with a digest.
    let rendered = v["rendered"].as_array().unwrap();
    let names: Vec<&str> = rendered
        .iter()
        .map(|r| r["kustomization"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "overlays/bad/kustomization.yaml",
            "overlays/base/kustomization.yaml",
            "overlays/good/kustomization.yaml"
        ]
    );
    assert_eq!(rendered[1]["objects"], 3);
    assert_eq!(rendered[0]["objects"], 2, "the deleted policy is gone");
    assert_ne!(rendered[1]["digest"], rendered[2]["digest"]);

    // `kfm infra render` prints what was judged, with the same digest.
    let shown = kfm(&fixtures())
        .args(["infra", "render", "overlays/good"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let shown = String::from_utf8(shown).unwrap();
    assert!(shown.contains(rendered[2]["digest"].as_str().unwrap()));
    assert!(shown.contains("replicas: 3"));
    assert!(shown.contains("registry.example.org/shop@sha256:7c2114"));
    assert!(shown.contains("memory: 512Mi") && shown.contains("memory: 128Mi"));
    // includeSelectors: every object, the Deployment's selector and pod
    // template; not the empty podSelector of the default deny (which would
    // narrow it), as Kustomize does.
    assert_eq!(shown.matches("env: good").count(), 5, "{shown}");
    assert!(shown.contains("podSelector: {}"));
    kfm(&fixtures())
        .args(["infra", "render", "broken"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no kustomization.yaml"));
}

/// A plan receipt records what each overlay renders to at head, so a
/// change that only edits a patch still changes a rendered digest.
#[test]
fn plan_receipts_carry_rendered_digests() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let base = repo.join("infra/k8s/base");
    let prod = repo.join("infra/k8s/prod");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&prod).unwrap();
    for f in [
        "kustomization.yaml",
        "namespace.yaml",
        "app.yaml",
        "deny-all.yaml",
    ] {
        std::fs::copy(fixtures().join("overlays/base").join(f), base.join(f)).unwrap();
    }
    let overlay = |count: u32| {
        std::fs::write(
            prod.join("kustomization.yaml"),
            format!("resources: [../base]\nreplicas:\n  - name: shop\n    count: {count}\n"),
        )
        .unwrap();
    };
    overlay(3);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "base"]);
    let digest_now = || {
        let out = kfm(&repo)
            .args(["infra", "render", "infra/k8s/prod", "--format", "json"])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v["digest"].as_str().unwrap().to_owned()
    };
    let before = digest_now();
    overlay(5);
    git(&repo, &["commit", "-qam", "scale prod"]);
    let after = digest_now();
    assert_ne!(before, after);
    let out = kfm(&repo)
        .args([
            "infra", "receipt", "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
        ])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let p: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(p["changed"][0]["path"], "infra/k8s/prod/kustomization.yaml");
    let rendered = p["rendered"].as_array().unwrap();
    assert_eq!(rendered.len(), 2);
    assert_eq!(
        rendered[1]["kustomization"],
        "infra/k8s/prod/kustomization.yaml"
    );
    assert_eq!(rendered[1]["digest"], after.as_str());
    assert_eq!(rendered[1]["objects"], 3);
}

/// KFM's own deployment passes its own gate (as .ci/run checks too).
#[test]
fn the_repositorys_own_infra_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    kfm(&root)
        .args(["infra", "check", "infra", ".github", "docs"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("0 findings"));
}

fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn plan_receipts_judge_the_head_commit_and_apply_needs_delivery_approval() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("infra/k8s")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("infra/k8s/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: x}\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "base"]);
    std::fs::copy(
        fixtures().join("broken/k8s/no-probes.yaml"),
        repo.join("infra/k8s/app.yaml"),
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "head"]);
    // The working tree is fixed, but the receipt is about the commit.
    std::fs::remove_file(repo.join("infra/k8s/app.yaml")).unwrap();

    let out = kfm(&repo)
        .args([
            "infra",
            "receipt",
            "plan",
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "--format",
            "json",
            "--out",
            "plan.json",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let p: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(p["kind"], "kfm.infra.PlanReceipt");
    assert_eq!(p["changed"].as_array().unwrap().len(), 1);
    assert_eq!(p["changed"][0]["path"], "infra/k8s/app.yaml");
    let bytes = std::fs::read(fixtures().join("broken/k8s/no-probes.yaml")).unwrap();
    use sha2_digest::hex_sha256;
    assert_eq!(
        p["changed"][0]["digest"],
        format!("sha256:{}", hex_sha256(&bytes))
    );
    assert!(
        p["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "KFM-K8S-002" && f["file"] == "infra/k8s/app.yaml")
    );
    assert_eq!(p["mode"]["mode"], "analysis");
    assert_eq!(p["rendered"], serde_json::json!([]));
    assert!(
        p["tooling"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "git")
    );
    assert_eq!(p["base"].as_str().unwrap().len(), 40);
    assert!(repo.join("plan.json").is_file());
    kfm(&repo)
        .args(["infra", "receipt", "plan", "--base", "no-such-rev"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a commit"));

    // Analysis mode: apply shows the receipt, records nothing, exits 1.
    kfm(dir.path()).arg("init").arg("ws").assert().success();
    let ws = dir.path().join("ws");
    let apply = |code: i32| {
        kfm(&repo)
            .arg("--workspace")
            .arg(&ws)
            .args([
                "infra",
                "receipt",
                "apply",
                "--env",
                "prod",
                "--method",
                "gitops/flux",
                "--actor",
                "ci:deploy",
                "--tool",
                "flux=2.4.0",
                "--input",
                "infra/k8s/cm.yaml",
                "--format",
                "json",
            ])
            .assert()
            .code(code)
            .get_output()
            .stdout
            .clone()
    };
    kfm(&repo)
        .args(["infra", "mode"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("analysis mode"));
    let v: serde_json::Value = serde_json::from_slice(&apply(1)).unwrap();
    assert_eq!(v["recorded"], false);
    assert_eq!(v["receipt"]["kind"], "kfm.infra.ApplyReceipt");
    let tail = |ws: &Path| {
        let out = kfm(dir.path())
            .arg("--workspace")
            .arg(ws)
            .args(["ledger", "tail", "--format", "json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(tail(&ws), 0, "analysis mode recorded something");

    // Malformed or expired approvals stay in analysis mode.
    std::fs::write(
        repo.join("DELIVERY_APPROVED.yaml"),
        "delivery:\n  approved: yes\n",
    )
    .unwrap();
    kfm(&repo)
        .args(["infra", "mode"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("malformed"));
    std::fs::write(
        repo.join("DELIVERY_APPROVED.yaml"),
        "delivery:\n  approved: true\n  approver: dana\n  expires: 2020-01-01\n",
    )
    .unwrap();
    apply(1);
    assert_eq!(tail(&ws), 0);

    // Delivery mode: signed, appended, verifiable.
    std::fs::write(
        repo.join("DELIVERY_APPROVED.yaml"),
        "delivery:\n  approved: true\n  approver: dana\n  change: CHG-7\n",
    )
    .unwrap();
    kfm(&repo)
        .args(["infra", "mode"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("approved by dana"));
    let v: serde_json::Value = serde_json::from_slice(&apply(0)).unwrap();
    assert_eq!(v["recorded"], true);
    let r = &v["receipt"];
    assert_eq!(r["env"], "prod");
    assert_eq!(r["approved_by"], "dana");
    assert_eq!(r["change"], "CHG-7");
    assert_eq!(r["repo"]["branch"], "main");
    assert_eq!(r["repo"]["commit"].as_str().unwrap().len(), 40);
    assert_eq!(r["actor"]["principal"], "ci:deploy");
    assert_eq!(r["actor"]["method"], "gitops/flux");
    assert!(
        r["inputs"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        r["tooling"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "flux" && t["version"] == "2.4.0")
    );
    let out = kfm(dir.path())
        .arg("--workspace")
        .arg(&ws)
        .args(["ledger", "tail", "--format", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let entries: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let env: serde_json::Value =
        serde_json::from_str(entries[0]["entry"].as_str().unwrap()).unwrap();
    assert_eq!(
        env["payloadType"],
        "application/vnd.kfm.infra.apply-receipt+json"
    );
    assert_eq!(entries[0]["leaf_hash"], v["leaf_hash"]);
    kfm(dir.path())
        .arg("--workspace")
        .arg(&ws)
        .args(["ledger", "verify"])
        .assert()
        .success();

    // Bad arguments are refused before anything is recorded.
    kfm(&repo)
        .arg("--workspace")
        .arg(&ws)
        .args(["infra", "receipt", "apply", "--env", "qa"])
        .assert()
        .code(2);
    kfm(&repo)
        .arg("--workspace")
        .arg(&ws)
        .args([
            "infra",
            "receipt",
            "apply",
            "--env",
            "dev",
            "--started",
            "yesterday",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("RFC 3339"));
    assert_eq!(tail(&ws), 1);
}

mod sha2_digest {
    /// sha256 of bytes, hex (via the system's sha256sum: the test checks
    /// kfm's digest with another implementation).
    pub fn hex_sha256(b: &[u8]) -> String {
        use std::io::Write;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}
