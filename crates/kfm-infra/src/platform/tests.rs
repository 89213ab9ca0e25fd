use std::path::Path;

use chrono::NaiveDate;

use super::*;

fn repo_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/platform")
}

fn tree(base: &str, overlay: Option<&str>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("base")).unwrap();
    std::fs::write(d.path().join("base/platform.yaml"), base).unwrap();
    if let Some(o) = overlay {
        std::fs::create_dir_all(d.path().join("overlays/dev")).unwrap();
        std::fs::write(d.path().join("overlays/dev/platform.yaml"), o).unwrap();
    }
    d
}

const HEAD: &str = "apiVersion: kfm.dev/platform/v1\nkind: PlatformState\n";
const OVER: &str = "apiVersion: kfm.dev/platform/v1\nkind: PlatformOverlay\nenv: dev\n";

#[test]
fn the_repositorys_desired_state_resolves_for_every_environment() {
    let envs = check_tree(&repo_tree()).unwrap();
    assert_eq!(envs, ["dev", "stage", "prod"]);
    let prod = load(&repo_tree(), "prod").unwrap();
    let audit = prod
        .jetstream
        .streams
        .iter()
        .find(|s| s.name == "KFM_AUDIT_PROD")
        .unwrap();
    assert_eq!(audit.replicas, Some(3), "the overlay's replicas win");
    assert_eq!(
        audit.subjects,
        ["kfm.prod.audit.>"],
        "the base's subjects stay"
    );
    assert!(prod.s3.buckets.iter().any(|b| {
        b.name == "kfm-prod-audit"
            && b.object_lock
                .is_some_and(|l| l.mode == LockMode::Compliance)
    }));
    assert_eq!(prod.sources.len(), 2);
}

#[test]
fn an_unknown_field_is_refused_with_its_line() {
    let d = tree(
        &format!(
            "{HEAD}jetstream:\n  streams:\n    - name: A\n      subjects: [a]\n      replica: 3\n"
        ),
        None,
    );
    let e = load(d.path(), "dev").unwrap_err().to_string();
    assert!(e.contains("platform.yaml:7"), "{e}");
    assert!(e.contains("replica"), "{e}");
}

#[test]
fn an_overlay_merges_by_name_and_cannot_hide_a_typo() {
    let base = format!(
        "{HEAD}jetstream:\n  streams:\n    - name: S_${{ENV}}\n      subjects: [\"s.${{env}}\"]\n      replicas: 1\n"
    );
    let d = tree(
        &base,
        Some(&format!(
            "{OVER}jetstream:\n  streams:\n    - name: S_DEV\n      replicas: 3\n    - name: T\n      subjects: [t]\n"
        )),
    );
    let p = load(d.path(), "dev").unwrap();
    assert_eq!(p.jetstream.streams.len(), 2);
    assert_eq!(p.jetstream.streams[0].subjects, ["s.dev"]);
    assert_eq!(p.jetstream.streams[0].replicas, Some(3));
    let d = tree(
        &base,
        Some(&format!(
            "{OVER}jetstream:\n  streams:\n    - name: S_DEV\n      replicaz: 3\n"
        )),
    );
    let e = load(d.path(), "dev").unwrap_err().to_string();
    assert!(e.contains("overlays/dev/platform.yaml:7"), "{e}");
}

#[test]
fn an_overlay_for_another_environment_is_refused() {
    let d = tree(
        HEAD,
        Some("apiVersion: kfm.dev/platform/v1\nkind: PlatformOverlay\nenv: prod\n"),
    );
    let e = load(d.path(), "dev").unwrap_err().to_string();
    assert!(e.contains("env: dev only"), "{e}");
}

#[test]
fn git_cannot_open_a_precise_schema_to_the_public_role() {
    let pg = "postgres:\n  database: kfm\n  roles:\n    - name: kfm_api\n      public: true\n  schemas:\n    - name: kfm_restricted\n      precise: true\n      usage: [kfm_api]\n      tables: {select: [kfm_api], row_level_security: true}\n";
    let d = tree(&format!("{HEAD}{pg}"), None);
    let e = load(d.path(), "dev").unwrap_err().to_string();
    assert!(e.contains("public role kfm_api: refused"), "{e}");
    let pg = pg
        .replace("usage: [kfm_api]", "usage: [PUBLIC]")
        .replace("select: [kfm_api]", "select: []");
    let d = tree(&format!("{HEAD}{pg}"), None);
    assert!(
        load(d.path(), "dev")
            .unwrap_err()
            .to_string()
            .contains("PUBLIC")
    );
}

#[test]
fn a_bucket_must_state_its_settings() {
    let d = tree(
        &format!("{HEAD}s3:\n  buckets:\n    - name: b\n      versioning: Enabled\n"),
        None,
    );
    let e = load(d.path(), "dev").unwrap_err().to_string();
    assert!(e.contains("public_access_block"), "{e}");
}

#[test]
fn hostile_identifiers_are_refused() {
    for name in ["kfm; DROP TABLE x", "Kfm", "a\"b", ""] {
        let d = tree(
            &format!(
                "{HEAD}postgres:\n  database: kfm\n  roles:\n    - name: {:?}\n",
                name
            ),
            None,
        );
        assert!(load(d.path(), "dev").is_err(), "{name:?} accepted");
    }
}

#[test]
fn the_ignore_file_is_strict_and_expires() {
    let text = "apiVersion: kfm.dev/platform/v1\nkind: DriftIgnore\nignore:\n  - resource: stream/KFM_*\n    field: max_age\n    env: dev\n    owner: a@b\n    reason: r\n    expires: 2027-01-31\n";
    let ig = ignore::parse("i.yaml", text).unwrap();
    let day = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    assert!(ig[0].covers("dev", "stream/KFM_AUDIT_DEV", "max_age", day("2027-01-31")));
    assert!(!ig[0].covers("dev", "stream/KFM_AUDIT_DEV", "max_age", day("2027-02-01")));
    assert!(!ig[0].covers("prod", "stream/KFM_AUDIT_DEV", "max_age", day("2026-01-01")));
    assert!(ignore::parse("i.yaml", &text.replace("    owner: a@b\n", "")).is_err());
    let e = ignore::parse("i.yaml", &text.replace("2027-01-31", "soon")).unwrap_err();
    assert!(e.to_string().contains("i.yaml:4"), "{e}");
}

#[test]
fn a_password_in_the_connection_string_is_refused() {
    for dsn in [
        "host=db user=kfm password=hunter2",
        "postgres://kfm:hunter2@db/kfm",
    ] {
        let d = tree(
            HEAD,
            Some(&format!(
                "{OVER}engines:\n  postgres:\n    dsn: \"{dsn}\"\n"
            )),
        );
        let e = load(d.path(), "dev").unwrap_err().to_string();
        assert!(e.contains("password_env"), "{dsn}: {e}");
    }
    let d = tree(
        HEAD,
        Some(&format!(
            "{OVER}engines:\n  postgres:\n    dsn: postgres://kfm@db/kfm\n    password_env: PW\n"
        )),
    );
    assert!(load(d.path(), "dev").is_ok());
}
