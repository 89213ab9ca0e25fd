//! `kfm drift` against the real engines: the machine's NATS JetStream
//! (KFM_TEST_NATS_URL, default nats://127.0.0.1:4222), its PostgreSQL
//! (127.0.0.1:5432, a database of its own per test) and an S3 server that
//! implements bucket settings (moto's server mode, KFM_TEST_MOTO_ENDPOINT;
//! scripts/test starts one). For each resource kind: a live change made
//! with the engine's own API is detected and named, reconcile in analysis
//! mode changes nothing, reconcile in delivery mode restores it with a
//! receipt that verifies in the ledger, and a second detect is clean.
//! Each test uses names of its own on the shared servers.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::bin;
use common::drift::*;
use common::pg::psql;
use serde_json::Value;

#[test]
fn jetstream_drift_is_detected_refused_in_analysis_and_restored_with_a_receipt() {
    let Some(fx) = Fixture::jetstream() else {
        return;
    };
    let up = fx.up();
    // Nothing exists yet: every resource is missing.
    let (code, v) = fx.detect();
    assert_eq!(code, 1, "{v}");
    for r in [format!("stream/{up}_AUDIT_DEV"), format!("kv/{up}_SEQ_DEV")] {
        assert!(has(&v, &r, "exists"), "{r} not reported missing: {v}");
    }
    fx.restore();
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "created, then still drift: {v}");
    // A clean run records the commit as the last known-good one.
    let head = String::from_utf8(
        Command::new("git")
            .current_dir(fx.repo())
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert_eq!(v["last_known_good"]["commit"], head.as_str(), "{v}");

    // Live changes through the JetStream API.
    let stream = format!("{up}_AUDIT_DEV");
    let bucket = format!("KV_{up}_SEQ_DEV");
    // (JetStream itself refuses to lift deny_purge or deny_delete.)
    change_stream(&stream, |c| {
        c.discard = async_nats::jetstream::stream::DiscardPolicy::Old;
        c.max_age = Duration::from_secs(3600);
    });
    change_stream(&bucket, |c| c.max_messages_per_subject = 5);
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let st = js.get_stream(&stream).await.unwrap();
        let mut c = st.consumer_info("auditor").await.unwrap().config.clone();
        c.max_deliver = 50;
        st.create_consumer(c).await.unwrap();
        // A stream under the owned prefix that git does not name.
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("{up}_EXTRA"),
            subjects: vec![format!("{}.extra", fx.id)],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let (code, v) = fx.detect();
    assert_eq!(code, 1);
    let r = format!("stream/{stream}");
    assert!(has(&v, &r, "discard"), "{v}");
    assert!(has(&v, &r, "max_age"), "{v}");
    assert!(has(&v, &format!("kv/{up}_SEQ_DEV"), "history"), "{v}");
    assert!(
        has(&v, &format!("consumer/{stream}/auditor"), "max_deliver"),
        "{v}"
    );
    assert!(has(&v, &format!("stream/{up}_EXTRA"), "unmanaged"), "{v}");
    let d = v["drifts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["field"] == "max_age")
        .unwrap();
    assert_eq!(d["live"], "1h");
    assert_eq!(d["desired"], "0s");
    assert!(d["since"].is_string() && d["source"].as_str().unwrap().contains("platform.yaml"));

    // Analysis mode: exit 1, nothing changes.
    fx.approve(false);
    let (code, _) = fx.reconcile();
    assert_eq!(code, 1);
    let (_, again) = fx.detect();
    assert_eq!(named(&again), named(&v), "analysis mode changed something");
    // Since when: the first sighting, kept across runs; and the last
    // known-good commit is still the clean one.
    let since = |r: &Value| {
        r["drifts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["field"] == "max_age")
            .map(|d| d["since"].clone())
    };
    assert_eq!(since(&again), since(&v));
    assert_eq!(again["last_known_good"]["commit"], head.as_str());

    // Delivery mode: restored, receipted; the unmanaged stream is kept
    // (and left reported: exit 1).
    let out = fx.restore_leaving(1);
    let fixed: Vec<&str> = out["fixed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["resource"].as_str().unwrap())
        .collect();
    assert!(fixed.contains(&r.as_str()), "{out}");
    assert!(!fixed.iter().any(|f| f.contains("EXTRA")));
    let (code, v) = fx.detect();
    assert_eq!(code, 1, "only the unmanaged stream is left: {v}");
    assert_eq!(
        named(&v),
        vec![(
            "low".into(),
            format!("stream/{up}_EXTRA"),
            "unmanaged".into()
        )]
    );
    // Nothing left that reconcile would change: it needs no workspace,
    // opens no ledger, and says what is left.
    fx.approve(true);
    let o = Command::new(bin())
        .current_dir(fx.repo())
        .env("KFM_WORKSPACE", fx.dir.path().join("no-such-workspace"))
        .args(["drift", "reconcile"])
        .output()
        .unwrap();
    fx.approve(false);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("nothing to fix") && text.contains("_EXTRA"),
        "{text}"
    );
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        assert!(
            js.get_stream(format!("{up}_EXTRA")).await.is_ok(),
            "reconcile removed a stream git does not name"
        );
        js.delete_stream(format!("{up}_EXTRA")).await.unwrap();
    });
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "second detect: {v}");
}

#[test]
fn the_repositorys_streams_are_what_kfm_events_creates() {
    if !reachable(&nats_url()) && skip(&format!("NATS at {} unreachable", nats_url())) {
        return;
    }
    // The repository's desired state, renamed under a prefix of this test
    // the way `events.prefix` renames what `kfm events ensure` creates.
    let fx = Fixture::new();
    let repo_base =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/platform/base/platform.yaml");
    let text = std::fs::read_to_string(repo_base).unwrap();
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let m = doc.as_mapping_mut().unwrap();
    m.remove("postgres");
    m.remove("s3");
    m.remove("apiVersion");
    m.remove("kind");
    let js = serde_yaml_ng::to_string(&doc).unwrap();
    let up = fx.up();
    let js = js
        .replace("KFM_", &format!("{up}KFM_"))
        .replace("kfm.${env}", &format!("{}.kfm.${{env}}", fx.id));
    fx.write(&js, &format!("  nats:\n    url: {}\n", nats_url()));
    let toml = fx.ws().join("kfm.toml");
    let t = std::fs::read_to_string(&toml).unwrap().replace(
        "# url = \"nats://127.0.0.1:4222\"",
        &format!("url = \"{}\"\nprefix = \"{}\"", nats_url(), fx.id),
    );
    std::fs::write(&toml, t).unwrap();
    let o = Command::new(bin())
        .current_dir(fx.ws())
        .env("KFM_WORKSPACE", fx.ws())
        .args(["events", "ensure"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, v) = fx.detect();
    // Clean up before asserting.
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        for s in [
            "KFM_AUDIT_DEV",
            "KFM_DEADLETTER_DEV",
            "KV_KFM_SEQUENCER_DEV",
        ] {
            let name = match s.strip_prefix("KV_") {
                Some(b) => format!("KV_{up}{b}"),
                None => format!("{up}{s}"),
            };
            let _ = js.delete_stream(name).await;
        }
    });
    assert_eq!(
        code, 0,
        "git's streams differ from what kfm events creates: {v}"
    );
}

#[test]
fn postgres_drift_is_detected_worst_first_and_restored_with_a_receipt() {
    let Some(fx) = Fixture::postgres() else {
        return;
    };
    let id = fx.id.clone();
    let db = fx.db_name();
    let (code, v) = fx.detect();
    assert_eq!(code, 1, "{v}");
    assert!(has(&v, &format!("role/{id}_api"), "exists"));
    assert!(has(&v, "extension/postgis", "exists"));
    fx.restore();
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "{v}");

    // A projected table, as the projector makes one: owned by the
    // projector, RLS on, a read policy and SELECT for the precise role.
    let t = format!("{id}_restricted.places_v1");
    psql(
        db,
        &format!(
            "SET ROLE {id}_projector;
             CREATE TABLE {t} (id int);
             ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
             CREATE POLICY read ON {t} FOR SELECT TO {id}_precise USING (true);
             REVOKE ALL ON {t} FROM PUBLIC;
             GRANT SELECT ON {t} TO {id}_precise;
             RESET ROLE"
        ),
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "a table as the rule says is no drift: {v}");

    // Live changes with psql: the precise table opened to the public
    // role (a grant, and a policy for PUBLIC), RLS off, a role given
    // CREATEDB, CREATE on a schema, the extension dropped.
    psql(
        db,
        &format!(
            "GRANT SELECT ON {t} TO {id}_api;
             CREATE POLICY leak ON {t} FOR SELECT TO PUBLIC USING (true);
             ALTER TABLE {t} DISABLE ROW LEVEL SECURITY;
             ALTER ROLE {id}_precise CREATEDB;
             GRANT CREATE ON SCHEMA {id}_data TO {id}_api;
             DROP EXTENSION postgis"
        ),
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 1);
    let n = named(&v);
    let table = format!("table/{t}");
    // Worst first: the three ways the precise table is open.
    let first: Vec<(&str, &str, &str)> = n[..3]
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        first,
        [
            ("critical", table.as_str(), "policies"),
            ("critical", table.as_str(), "privileges"),
            ("critical", table.as_str(), "row_level_security"),
        ],
        "{n:?}"
    );
    assert!(has(&v, "extension/postgis", "exists"));
    assert!(n.iter().any(|x| x
        == &(
            "critical".into(),
            table.clone(),
            "row_level_security".into()
        )));
    assert!(has(&v, &format!("role/{id}_precise"), "createdb"));
    assert!(has(&v, &format!("schema/{id}_data"), "privileges"));

    // The human report and SARIF name it too.
    let sarif = fx.dir.path().join("drift.sarif");
    let o = fx.kfm(&[
        "drift",
        "detect",
        "--output",
        &format!("sarif={}", sarif.display()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(
        human
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("CRITICAL") && l.contains(&table)),
        "{human}"
    );
    let s: Value = serde_json::from_slice(&std::fs::read(&sarif).unwrap()).unwrap();
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(s["runs"][0]["results"][0]["ruleId"], "KFM-DRIFT-CRITICAL");

    // Analysis mode: nothing changes.
    let (code, _) = fx.reconcile();
    assert_eq!(code, 1);
    assert_eq!(
        psql(
            db,
            &format!("SELECT has_table_privilege('{id}_api', '{t}', 'SELECT')")
        ),
        "t",
        "analysis mode revoked a grant"
    );

    let out = fx.restore();
    assert!(
        out["fixed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["resource"] == table.as_str()
                && f["actions"].to_string().contains("REVOKE SELECT")),
        "{out}"
    );
    assert_eq!(
        psql(
            db,
            &format!("SELECT has_table_privilege('{id}_api', '{t}', 'SELECT')")
        ),
        "f"
    );
    assert_eq!(
        psql(
            db,
            &format!("SELECT relrowsecurity FROM pg_class WHERE oid = '{t}'::regclass")
        ),
        "t"
    );
    assert_eq!(
        psql(
            db,
            "SELECT count(*) FROM pg_policies WHERE policyname = 'leak'"
        ),
        "0"
    );
    assert_eq!(
        psql(
            db,
            "SELECT count(*) FROM pg_extension WHERE extname = 'postgis'"
        ),
        "1"
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "second detect: {v}");
    // The table's rows were never touched: drift changes settings, not data.
    assert_eq!(psql(db, &format!("SELECT count(*) FROM {t}")), "0");
}

#[test]
fn a_hostile_live_role_name_is_reported_quoted_and_never_executed() {
    let Some(fx) = Fixture::postgres() else {
        return;
    };
    let id = fx.id.clone();
    let db = fx.db_name();
    fx.restore();
    // Someone grants USAGE on the precise schema to a role whose name is
    // an injection attempt.
    let evil = format!("evil{id}\"; DROP SCHEMA {id}_data CASCADE; --");
    let quoted = format!("\"{}\"", evil.replace('"', "\"\""));
    psql(
        db,
        &format!("CREATE ROLE {quoted}; GRANT USAGE ON SCHEMA {id}_restricted TO {quoted}"),
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 1);
    assert!(
        has(&v, &format!("schema/{id}_restricted"), "privileges"),
        "{v}"
    );
    fx.restore();
    assert_eq!(
        psql(
            db,
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{id}_data'")
        ),
        "1",
        "a live name was executed as SQL"
    );
    assert_eq!(
        psql(
            db,
            &format!(
                "SELECT has_schema_privilege({}, '{id}_restricted', 'USAGE')",
                sql_str(&evil)
            )
        ),
        "f"
    );
    psql("postgres", &format!("DROP ROLE {quoted}"));
}

#[test]
fn s3_bucket_drift_is_detected_and_restored_with_a_receipt() {
    let Some(endpoint) = moto() else { return };
    let fx = Fixture::new();
    fx.write(
        &s3_state(&fx),
        &format!(
            "  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    access_key_env: KFM_TEST_S3_AK\n    secret_key_env: KFM_TEST_S3_SK\n"
        ),
    );
    let id = &fx.id;
    let (code, v) = fx.detect();
    assert_eq!(code, 1, "{v}");
    assert!(has(&v, &format!("bucket/{id}-dev-audit"), "exists"));
    fx.restore();
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "created, then still drift: {v}");

    // Live changes through the S3 API.
    boto(
        &endpoint,
        &format!(
            "s3.put_bucket_versioning(Bucket='{id}-dev-published', VersioningConfiguration={{'Status': 'Suspended'}})\n\
             s3.delete_public_access_block(Bucket='{id}-dev-published')\n\
             s3.put_bucket_encryption(Bucket='{id}-dev-audit', ServerSideEncryptionConfiguration={{'Rules': [{{'ApplyServerSideEncryptionByDefault': {{'SSEAlgorithm': 'AES256'}}}}]}})\n\
             s3.put_object_lock_configuration(Bucket='{id}-dev-audit', ObjectLockConfiguration={{'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': {{'Mode': 'GOVERNANCE', 'Days': 1}}}}}})"
        ),
    );
    let (code, v) = fx.detect();
    assert_eq!(code, 1);
    let n = named(&v);
    let published = format!("bucket/{id}-dev-published");
    assert_eq!(
        n[0],
        (
            "critical".into(),
            published.clone(),
            "public_access_block".into()
        ),
        "{n:?}"
    );
    assert!(has(&v, &published, "versioning"));
    assert!(has(&v, &format!("bucket/{id}-dev-audit"), "encryption"));
    assert!(has(&v, &format!("bucket/{id}-dev-audit"), "object_lock"));

    let (code, _) = fx.reconcile();
    assert_eq!(code, 1, "analysis mode");
    let (_, again) = fx.detect();
    assert_eq!(named(&again), n, "analysis mode changed something");

    fx.restore();
    let (code, v) = fx.detect();
    assert_eq!(code, 0, "second detect: {v}");
}
