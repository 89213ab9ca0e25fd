//! `kfm drift` as an operator meets it: engines that cannot be reached,
//! a desired state that does not parse, the reviewed ignore file, adopting
//! an incident's live change, and the watch loop with its metrics. Against
//! the machine's NATS and PostgreSQL, like tests/drift.rs.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin;
use common::drift::*;
use common::pg::psql;
use serde_json::Value;

#[test]
fn an_unreachable_engine_is_cannot_evaluate_never_no_drift() {
    let fx = Fixture::new();
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        (
            jetstream_state(&fx),
            format!("  nats:\n    url: nats://127.0.0.1:{port}\n"),
            "jetstream",
        ),
        (
            postgres_state(&fx).replace("placeholder", "kfm"),
            format!("  postgres:\n    dsn: host=127.0.0.1 port={port} user=postgres\n"),
            "postgres",
        ),
        (
            s3_state(&fx),
            format!(
                "  s3:\n    endpoint: http://127.0.0.1:{port}\n    access_key_env: KFM_TEST_S3_AK\n    secret_key_env: KFM_TEST_S3_SK\n"
            ),
            "s3",
        ),
        // kubectl diff --server-side against an API server that is not
        // there (the kubeconfig names the closed port).
        (
            String::new(),
            "  kubernetes:\n    kubeconfig_env: KFM_TEST_KUBECONFIG\n    overlay: infra/k8s/overlays/dev\n"
                .to_owned(),
            "kubernetes",
        ),
    ];
    fx.kubeconfig(port);
    for (state, engines, engine) in cases {
        fx.write(&state, &engines);
        for args in [
            vec!["drift", "detect"],
            vec!["--format", "json", "drift", "detect"],
        ] {
            let o = fx.kfm(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{engine}: {err}");
            assert!(
                err.contains(engine) && err.contains("cannot evaluate"),
                "{engine}: {err}"
            );
            assert!(!String::from_utf8_lossy(&o.stdout).contains("no drift"));
        }
        fx.approve(true);
        let (code, o) = fx.reconcile();
        fx.approve(false);
        assert_eq!(code, 2, "{engine}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // A credential variable that is not set is "cannot evaluate" too.
    fx.write(&s3_state(&fx), "  s3:\n    endpoint: http://127.0.0.1:1\n    access_key_env: KFM_TEST_UNSET_VAR\n    secret_key_env: KFM_TEST_S3_SK\n");
    let o = fx.kfm(&["drift", "detect"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("KFM_TEST_UNSET_VAR"));
    fx.write("", "  kubernetes:\n    kubeconfig_env: KFM_TEST_UNSET_KUBECONFIG\n    overlay: infra/k8s/overlays/dev\n");
    let o = fx.kfm(&["drift", "detect"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("KFM_TEST_UNSET_KUBECONFIG"));
}

#[test]
fn a_broken_desired_state_is_cannot_evaluate_with_the_file_and_line() {
    let fx = Fixture::new();
    fx.write(
        "jetstream:\n  streams:\n    - name: A\n      subjects: [a]\n      replicaz: 3\n",
        "  nats:\n    url: nats://127.0.0.1:4222\n",
    );
    let o = fx.kfm(&["drift", "detect"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("infra/platform/base/platform.yaml:7") && err.contains("replicaz"),
        "{err}"
    );
    // The gate checks the same files.
    let o = fx.kfm(&["infra", "check", "infra/platform"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn ignored_drift_passes_until_it_expires_and_critical_drift_never_does() {
    let Some(fx) = Fixture::postgres() else {
        return;
    };
    let id = fx.id.clone();
    let db = fx.db_name();
    fx.restore();
    psql(
        db,
        &format!(
            "ALTER ROLE {id}_projector CREATEDB; GRANT USAGE ON SCHEMA {id}_restricted TO PUBLIC"
        ),
    );
    let ignore = |expires: &str| {
        std::fs::write(
            fx.repo().join("infra/platform/drift-ignore.yaml"),
            format!(
                "apiVersion: kfm.dev/platform/v1\nkind: DriftIgnore\nignore:\n  - resource: role/{id}_*\n    field: createdb\n    env: dev\n    owner: dba@kfm.example\n    reason: migration in progress\n    expires: {expires}\n  - resource: schema/{id}_restricted\n    field: \"*\"\n    env: \"*\"\n    owner: someone@kfm.example\n    reason: trying to hide a critical drift\n    expires: 2999-01-01\n"
            ),
        )
        .unwrap();
    };
    ignore("2999-01-01");
    let (code, v) = fx.detect();
    assert_eq!(code, 1, "the critical drift is never ignored: {v}");
    assert_eq!(
        named(&v),
        vec![(
            "critical".into(),
            format!("schema/{id}_restricted"),
            "privileges".into()
        )]
    );
    assert_eq!(v["ignored"][0]["resource"], format!("role/{id}_projector"));
    psql(
        db,
        &format!("REVOKE USAGE ON SCHEMA {id}_restricted FROM PUBLIC"),
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "ignored: {v}");
    ignore("2020-01-01");
    let (code, v) = fx.detect();
    assert_eq!(code, 1, "an expired entry ignores nothing: {v}");
    assert!(has(&v, &format!("role/{id}_projector"), "createdb"));
}

#[test]
fn adopt_writes_the_live_change_as_an_overlay_and_detect_is_then_clean() {
    let Some(fx) = Fixture::jetstream() else {
        return;
    };
    fx.restore();
    let stream = format!("{}_AUDIT_DEV", fx.up());
    change_stream(&stream, |c| c.duplicate_window = Duration::from_secs(60));
    let (code, _) = fx.detect();
    assert_eq!(code, 1);
    for bad in ["../x", "", "a b"] {
        assert_eq!(
            fx.kfm(&["drift", "adopt", "--incident", bad]).status.code(),
            Some(2)
        );
    }
    let o = fx.kfm(&[
        "drift",
        "adopt",
        "--incident",
        "INC-7",
        "--actor",
        "oncall:sam",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let file = fx
        .repo()
        .join("infra/platform/overlays/dev/incident-INC-7.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("duplicate_window: 1m")
            && text.contains("id: INC-7")
            && text.contains("oncall:sam"),
        "{text}"
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "git now states the live change: {v}");
    // Adopting the same incident twice is refused; nothing is overwritten.
    assert_eq!(
        fx.kfm(&["drift", "adopt", "--incident", "INC-7"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

#[test]
fn watch_refuses_more_than_five_minutes_and_reports_each_run_with_metrics() {
    let Some(fx) = Fixture::jetstream() else {
        return;
    };
    let o = fx.kfm(&["drift", "watch", "--interval", "6m", "--runs", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than 5m"));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(bin())
        .current_dir(fx.repo())
        .env("KFM_WORKSPACE", fx.ws())
        .args([
            "drift",
            "watch",
            "--interval",
            "1s",
            "--runs",
            "5",
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut metrics = String::new();
    let ok = common::eventually(Duration::from_secs(20), || {
        metrics = try_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap_or_default();
        metrics.contains("kfm_drift_runs_total{result=\"drift\"}")
    });
    let out = child.wait_with_output().unwrap();
    assert!(ok, "metrics: {metrics}");
    assert!(
        metrics.contains("kfm_drift_open{severity=\"high\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("kfm_drift_last_success_timestamp_seconds"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["result"] == "drift"), "{lines:?}");
    assert!(lines[0]["found"].to_string().contains("_AUDIT_DEV exists"));
}
