//! `kfm projection`: the projector against the machine's real PostgreSQL
//! with PostGIS, each test in a database of its own. Skipped (with a
//! message) when PostgreSQL or PostGIS is not there, unless
//! KFM_REQUIRE_SERVICES=1 (CI), which makes that a failure.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pg::{Db, psql, psql_as};
use common::{kfm, samples_promoted};
use serde_json::Value;

/// `kfm` in `ws`, its projections in the PostgreSQL at `url`.
fn kfm_pg(ws: &Path, url: &str) -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(ws)
        .env("KFM_WORKSPACE", ws)
        .env("KFM_POSTGRES_URL", url)
        .env_remove("KFM_LOG");
    c
}

fn projection(ws: &Path, db: &Db, args: &[&str]) -> Output {
    kfm_pg(ws, &db.url())
        .arg("projection")
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn verify_json(ws: &Path, db: &Db) -> (i32, Value) {
    let o = projection(ws, db, &["verify", "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap_or(-1), v)
}

fn ledger_size(ws: &Path) -> u64 {
    let o = kfm(ws, &["ledger", "verify", "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["size"]
        .as_u64()
        .or_else(|| v["tree_size"].as_u64())
        .unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn projects_every_published_version_verifies_it_and_catches_a_tampered_table() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    let before = ledger_size(&ws);
    let out = ok(&projection(
        &ws,
        &db,
        &["run", "--once", "--format", "json"],
    ));
    let pass: Value = serde_json::from_str(out.trim()).unwrap();
    let loaded = pass["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 3, "{pass}");
    // The sensitive dataset: precise layer in the restricted schema,
    // generalised in the public one.
    let sites = loaded
        .iter()
        .find(|l| l["dataset"] == "ks-sites-synthetic")
        .unwrap();
    let tables: Vec<&str> = sites["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["table"].as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&"kfm_restricted.ks_sites_synthetic_v1_p"),
        "{tables:?}"
    );
    assert!(
        tables.contains(&"kfm_data.ks_sites_synthetic_v1_g"),
        "{tables:?}"
    );
    assert_eq!(pass["recorded"], 4);
    assert_eq!(ledger_size(&ws), before + 4, "one signed record per layer");
    assert_eq!(
        psql(&db.0, "SELECT count(*) FROM kfm_data.ks_places_v1_p"),
        "216"
    );
    assert_eq!(
        psql(
            &db.0,
            "SELECT bool_and(ST_SRID(geom) = 4326 AND GeometryType(geom) IN ('POLYGON', 'MULTIPOLYGON') AND ST_IsValid(geom)) FROM kfm_data.ks_counties_v1_p"
        ),
        "t"
    );

    // A second pass changes nothing and appends nothing.
    let again: Value = serde_json::from_str(
        ok(&projection(
            &ws,
            &db,
            &["run", "--once", "--format", "json"],
        ))
        .trim(),
    )
    .unwrap();
    assert_eq!(again["loaded"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["recorded"], 0);
    assert_eq!(ledger_size(&ws), before + 4);

    let (code, v) = verify_json(&ws, &db);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["layers"].as_array().unwrap().len(), 4);

    // One property of one row changed behind KFM's back.
    psql(
        &db.0,
        "UPDATE kfm_data.ks_places_v1_p SET props = props || '{\"name\": \"Nowhere\"}' WHERE ord = 7",
    );
    let (code, v) = verify_json(&ws, &db);
    assert_eq!(code, 1, "{v}");
    let bad: Vec<&Value> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["equal"] == false)
        .collect();
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["table"], "kfm_data.ks_places_v1_p");
    assert!(
        bad[0]["problem"]
            .as_str()
            .unwrap()
            .contains("is not its artifact"),
        "{v}"
    );

    // A deleted row of the restricted layer, and a table nobody projected.
    psql(
        &db.0,
        "DELETE FROM kfm_restricted.ks_sites_synthetic_v1_p WHERE ord = 3",
    );
    psql(&db.0, "CREATE TABLE kfm_data.sneaky (x int)");
    let (code, v) = verify_json(&ws, &db);
    assert_eq!(code, 1);
    let text = v.to_string();
    assert!(text.contains("kfm_data.sneaky"), "{v}");
    assert!(
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["table"] == "kfm_restricted.ks_sites_synthetic_v1_p" && l["equal"] == false),
        "{v}"
    );

    // Rebuild from the canonical store: equal again, and the records it
    // would write are the ones the ledger already holds.
    ok(&projection(&ws, &db, &["rebuild"]));
    let (code, v) = verify_json(&ws, &db);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        ledger_size(&ws),
        before + 4,
        "a rebuild of equal tables appends no new record"
    );

    // The columns derived from the properties (search terms, time) and the
    // catalog's queryables and extent are proven too: a search or datetime
    // answer changed behind KFM's back is caught, naming what.
    for (tamper, names) in [
        (
            "UPDATE kfm_data.ks_places_v1_p SET terms = array_append(terms, E'name\\x1fplanted') WHERE ord = 2",
            "search terms",
        ),
        (
            "UPDATE kfm_data.ks_sites_synthetic_v1_g SET t = now() WHERE ord = 5",
            "its time",
        ),
        (
            "UPDATE kfm.layers SET queryables = '{\"properties\": [], \"geometry_types\": []}' WHERE dataset = 'ks-counties'",
            "queryables",
        ),
        (
            "UPDATE kfm.layers SET extent = '{0,0,1,1}' WHERE dataset = 'ks-places'",
            "extent",
        ),
    ] {
        psql(&db.0, tamper);
        let (code, v) = verify_json(&ws, &db);
        assert_eq!(code, 1, "{tamper}: {v}");
        assert!(v.to_string().contains(names), "{tamper}: {v}");
        ok(&projection(&ws, &db, &["rebuild"]));
        let (code, v) = verify_json(&ws, &db);
        assert_eq!(code, 0, "{v}");
    }
    assert_eq!(ledger_size(&ws), before + 4);

    // Every artifact streamed instead of read whole: the same tables, the
    // same digests (so the same records: none new), and verify agrees.
    let o = kfm_pg(&ws, &db.url())
        .env("KFM_PROJECTION_WHOLE_MAX", "0")
        .args(["projection", "rebuild"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(ledger_size(&ws), before + 4);
    let o = kfm_pg(&ws, &db.url())
        .env("KFM_PROJECTION_WHOLE_MAX", "0")
        .args(["projection", "verify"])
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn the_public_role_cannot_read_restricted_precise_layers_whatever_sql_it_sends() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    ok(&projection(&ws, &db, &["run", "--once"]));
    let restricted = "kfm_restricted.ks_sites_synthetic_v1_p";
    let refused = |sql: &str| {
        let o = psql_as(&db.0, "kfm_api", sql);
        assert!(
            !o.status.success(),
            "kfm_api ran {sql:?}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for sql in [
        format!("SELECT * FROM {restricted}"),
        format!("SELECT 1; SELECT ST_AsText(geom) FROM {restricted} -- '"),
        format!("SELECT count(*) FROM {restricted} WHERE '' = ''/*"),
        "SET ROLE kfm_api_precise".to_owned(),
        "SET ROLE kfm_projector".to_owned(),
        "SET SESSION AUTHORIZATION kfm_api_precise".to_owned(),
        format!("ALTER TABLE {restricted} DISABLE ROW LEVEL SECURITY"),
        format!("GRANT SELECT ON {restricted} TO kfm_api"),
        "CREATE TABLE kfm_data.mine AS SELECT 1".to_owned(),
        "SELECT pg_read_file('base/' || (SELECT oid FROM pg_database WHERE datname = current_database()))".to_owned(),
        "COPY kfm_data.ks_places_v1_p TO '/tmp/leak.csv'".to_owned(),
        "DELETE FROM kfm_data.ks_places_v1_p".to_owned(),
        "UPDATE kfm.layers SET rows = 0".to_owned(),
    ] {
        refused(&sql);
    }
    // What the public role may read: the public layers and the catalog.
    let o = psql_as(
        &db.0,
        "kfm_api",
        "SELECT count(*) FROM kfm_data.ks_sites_synthetic_v1_g",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "150");
    let o = psql_as(
        &db.0,
        "kfm_api_precise",
        &format!("SELECT count(*) FROM {restricted}"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "150");

    // A grant given by mistake still shows the public role no row: row-level
    // security has a policy only for the precise reader.
    psql(
        &db.0,
        &format!(
            "GRANT USAGE ON SCHEMA kfm_restricted TO kfm_api; GRANT SELECT ON {restricted} TO kfm_api"
        ),
    );
    let o = psql_as(
        &db.0,
        "kfm_api",
        &format!("SELECT count(*) FROM {restricted}"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");

    // KFM's roles, and no others of its own: none above the membrane.
    assert_eq!(
        psql(
            &db.0,
            "SELECT string_agg(rolname || ':' || rolsuper || rolbypassrls || rolcreaterole, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'kfm\\_%'"
        ),
        "kfm_api:falsefalsefalse,kfm_api_precise:falsefalsefalse,kfm_projector:falsefalsefalse"
    );
    assert_eq!(
        psql(
            &db.0,
            "SELECT pg_has_role('kfm_api', 'kfm_api_precise', 'MEMBER') OR pg_has_role('kfm_api', 'kfm_projector', 'MEMBER')"
        ),
        "f"
    );
}

#[test]
fn a_new_version_replaces_the_old_and_a_pointer_that_stops_verifying_is_dropped() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    ok(&projection(&ws, &db, &["run", "--once"]));
    // v2 of ks-places: one more place.
    let src = ws.join("datasets/ks-places.csv");
    let mut csv = std::fs::read_to_string(&src).unwrap();
    csv.push_str("Nowhere,38.5,-98.5,US,KS,009\n");
    std::fs::write(&src, csv).unwrap();
    ok(&kfm(&ws, &["ingest", "datasets/ks-places.yaml"]));
    ok(&kfm(&ws, &["promote", "ks-places"]));
    let pass: Value = serde_json::from_str(
        ok(&projection(
            &ws,
            &db,
            &["run", "--once", "--format", "json"],
        ))
        .trim(),
    )
    .unwrap();
    assert_eq!(pass["loaded"][0]["version"], "ks-places@v2", "{pass}");
    assert_eq!(
        psql(&db.0, "SELECT count(*) FROM kfm_data.ks_places_v2_p"),
        "217"
    );
    assert_eq!(
        psql(
            &db.0,
            "SELECT to_regclass('kfm_data.ks_places_v1_p') IS NULL"
        ),
        "t",
        "v1's table is dropped with the switch"
    );
    assert_eq!(verify_json(&ws, &db).0, 0);

    // A pointer that no longer verifies (its manifest digest altered):
    // fail closed, the projection goes, the pass says why and exits 1.
    let p = ws.join("store/published/ks-counties.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["manifest_digest"] = Value::String(format!("sha256:{}", "0".repeat(64)));
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = projection(&ws, &db, &["run", "--once", "--format", "json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pass: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        pass["dropped"],
        serde_json::json!(["ks-counties"]),
        "{pass}"
    );
    assert!(
        pass["problems"][0]
            .as_str()
            .unwrap()
            .contains("does not verify"),
        "{pass}"
    );
    assert_eq!(
        psql(
            &db.0,
            "SELECT count(*) FROM kfm.projections WHERE dataset = 'ks-counties'"
        ),
        "0"
    );
    assert_eq!(
        psql(
            &db.0,
            "SELECT to_regclass('kfm_data.ks_counties_v1_p') IS NULL"
        ),
        "t"
    );
}

#[test]
fn a_url_with_a_password_or_an_unreachable_server_is_refused_with_exit_2() {
    let (_d, ws) = samples_promoted();
    let o = kfm_pg(&ws, "postgres://kfm:hunter2@127.0.0.1/kfm")
        .args(["projection", "run", "--once"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("password") && !err.contains("hunter2"),
        "{err}"
    );
    // Nothing listens on port 9 of loopback.
    let o = kfm_pg(&ws, "postgres://postgres@127.0.0.1:9/kfm")
        .args(["projection", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
}

/// A generated point dataset large enough that a load takes a while.
fn promote_generated(ws: &Path, n: usize) {
    let mut csv = String::from("name,lat,lng,country,admin1,admin2\n");
    for i in 0..n {
        let lat = 37.0 + (i % 3000) as f64 * 0.001;
        let lng = -101.0 + (i / 3000) as f64 * 0.01;
        csv.push_str(&format!(
            "place {i} 'quoted'; -- x,{lat:.5},{lng:.5},US,KS,{:03}\n",
            i % 200
        ));
    }
    std::fs::write(ws.join("datasets/ks-many.csv"), csv).unwrap();
    let spec = std::fs::read_to_string(ws.join("datasets/ks-places.yaml"))
        .unwrap()
        .replace("id: ks-places", "id: ks-many")
        .replace("uri: ks-places.csv", "uri: ks-many.csv");
    std::fs::write(ws.join("datasets/ks-many.yaml"), spec).unwrap();
    ok(&kfm(ws, &["ingest", "datasets/ks-many.yaml"]));
    ok(&kfm(ws, &["promote", "ks-many"]));
}

/// Every catalog row names a table that holds exactly the rows it records
/// (as the API's public role sees them), and every projection has all the
/// layers its manifest publishes.
fn nothing_half_visible(db: &Db) {
    let rows = psql(
        &db.0,
        "SELECT schema_name || '.' || table_name || ' ' || rows FROM kfm.layers WHERE schema_name = 'kfm_data'",
    );
    for line in rows.lines() {
        let (table, n) = line.split_once(' ').unwrap();
        let o = psql_as(&db.0, "kfm_api", &format!("SELECT count(*) FROM {table}"));
        assert!(
            o.status.success(),
            "{table}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            n,
            "{table} is half there"
        );
    }
    assert_eq!(
        psql(
            &db.0,
            "SELECT count(*) FROM kfm.projections p WHERE p.dataset = 'ks-sites-synthetic' AND (SELECT count(*) FROM kfm.layers l WHERE l.dataset = p.dataset) <> 2"
        ),
        "0"
    );
}

#[test]
fn sigkill_mid_load_twenty_times_leaves_nothing_half_visible_and_verify_passes() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    promote_generated(&ws, 60_000);
    let t = Instant::now();
    ok(&projection(&ws, &db, &["rebuild"]));
    let full = t.elapsed();
    assert_eq!(
        psql(&db.0, "SELECT count(*) FROM kfm_data.ks_many_v1_p"),
        "60000"
    );
    let records = ledger_size(&ws);
    for round in 0..20u32 {
        // Spread the kills over the whole of a rebuild: connecting, the
        // COPY, the indexes, the commit, the ledger records.
        let at = full.mul_f64(f64::from(round) / 20.0 + 0.02);
        let mut child = kfm_pg(&ws, &db.url())
            .args(["projection", "rebuild"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        nothing_half_visible(&db);
    }
    // After the last kill, one pass completes whatever was cut short.
    ok(&projection(&ws, &db, &["run", "--once"]));
    let (code, v) = verify_json(&ws, &db);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        psql(&db.0, "SELECT count(*) FROM kfm_data.ks_many_v1_p"),
        "60000"
    );
    assert_eq!(ledger_size(&ws), records, "no record was appended twice");
    // The writer lock of a killed projector is released with its process.
    assert!(Duration::from_secs(0) < full);
}

fn drill(ws: &Path, url: &str, args: &[&str]) -> (i32, Value) {
    drill_with(ws, url, args, None)
}

fn drill_streamed(ws: &Path, url: &str) -> (i32, Value) {
    drill_with(ws, url, &[], Some("0"))
}

fn drill_with(ws: &Path, url: &str, args: &[&str], whole_max: Option<&str>) -> (i32, Value) {
    let mut c = kfm_pg(ws, url);
    if let Some(n) = whole_max {
        c.env("KFM_PROJECTION_WHOLE_MAX", n);
    }
    let o = c
        .args(["--format", "json", "dr", "drill"])
        .args(args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

#[test]
fn the_dr_drill_rebuilds_from_the_canonical_store_alone_after_the_database_is_deleted() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    ok(&projection(&ws, &db, &["run", "--once"]));
    // The database is lost entirely.
    let url = db.url();
    psql("postgres", &format!("DROP DATABASE {} WITH (FORCE)", db.0));
    let before = ledger_size(&ws);
    let (code, v) = drill(&ws, &url, &[]);
    assert_eq!(code, 0, "{v}");
    let r = &v["receipt"];
    assert_eq!(r["kind"], "kfm.dr-drill/v1");
    assert_eq!(r["outcome"], "passed", "{v}");
    assert_eq!(r["pointers_verified"], 3);
    assert_eq!(r["layers"].as_array().unwrap().len(), 4);
    assert!(
        r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["equal"] == true)
    );
    // Five features of each of the four layers traced to the artifact and
    // the ledger.
    let ev = r["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 20, "{v}");
    assert!(ev.iter().all(|e| e["resolved"] == true), "{v}");
    assert_eq!(r["rpo"]["verified"], true);
    assert_eq!(r["rpo"]["size"].as_u64(), Some(before));
    assert_eq!(r["policy"]["pinned"], true);
    assert!(r["rto_seconds"].as_f64().unwrap() > 0.0);
    // The receipt is the one new ledger entry (the projection records it
    // would write are already there); the scratch database is gone.
    assert_eq!(ledger_size(&ws), before + 1);
    assert_eq!(v["ledger_index"].as_u64(), Some(before));
    let scratch = r["database"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(scratch.starts_with("kfm_dr_"), "{scratch}");
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")
        ),
        "0"
    );
}

#[test]
fn a_drill_that_meets_a_damaged_artifact_or_an_unpinned_policy_fails_and_says_so() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    // Into a database that already holds projections: refused.
    ok(&projection(&ws, &db, &["run", "--once"]));
    let o = kfm_pg(&ws, &db.url())
        .args(["dr", "drill", "--into", &db.url()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds projections"));

    // One byte of a processed artifact changed, and the pin moved.
    let art = ws.join("store/processed/ks-places/v1/features.geojson");
    let mut bytes = std::fs::read(&art).unwrap();
    let at = bytes.iter().position(|&b| b == b'S').unwrap();
    bytes[at] = b's';
    let _ = std::fs::remove_file(&art);
    std::fs::write(&art, bytes).unwrap();
    let pins = ws.join("environments/dev.toml");
    let text = std::fs::read_to_string(&pins).unwrap();
    // Another (well-formed) digest than the bundle's.
    let at = text.find("sha256:").unwrap() + "sha256:".len();
    let moved = format!("{}{}{}", &text[..at], "0".repeat(64), &text[at + 64..]);
    std::fs::write(&pins, moved).unwrap();
    let before = ledger_size(&ws);
    // Streamed, the damaged artifact is caught after its last chunk, and
    // what was loaded from it rolls back.
    let (code, v) = drill_streamed(&ws, &db.url());
    assert_eq!(code, 1, "{v}");
    let r = &v["receipt"];
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["policy"]["pinned"], false, "{v}");
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("ks-places") && problems.contains("digest"),
        "{problems}"
    );
    // A failed drill is recorded too.
    assert_eq!(ledger_size(&ws), before + 1);
}

#[test]
fn a_running_projector_follows_a_promotion_and_stops_cleanly_on_sigterm() {
    let Some(db) = Db::fresh() else { return };
    let (_d, ws) = samples_promoted();
    let child = kfm_pg(&ws, &db.url())
        .args([
            "--format",
            "json",
            "projection",
            "run",
            "--interval-s",
            "3600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let projected = |sql: &str| psql_as(&db.0, "postgres", sql).stdout == b"1\n";
    assert!(
        common::eventually(Duration::from_secs(60), || projected(
            "SELECT count(*) FROM kfm.projections WHERE version_id = 'ks-places@v1'"
        )),
        "the first pass did not project the samples"
    );
    // A promotion while the projector runs: the moved pointer is announced
    // through the ledger's writer, and the projector passes again at once
    // (its interval is an hour).
    let src = ws.join("datasets/ks-places.csv");
    let mut csv = std::fs::read_to_string(&src).unwrap();
    csv.push_str("Elsewhere,38.6,-98.4,US,KS,009\n");
    std::fs::write(&src, csv).unwrap();
    ok(&kfm(&ws, &["ingest", "datasets/ks-places.yaml"]));
    ok(&kfm(&ws, &["promote", "ks-places"]));
    assert!(
        common::eventually(Duration::from_secs(60), || projected(
            "SELECT count(*) FROM kfm.projections WHERE version_id = 'ks-places@v2'"
        )),
        "the running projector did not follow the promotion"
    );
    // SIGTERM: it stops between passes, exit 0.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passes: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(passes.len() >= 2, "{passes:?}");
    assert_eq!(verify_json(&ws, &db).0, 0);
}
