//! A PostgreSQL database of its own per test (the machine's server on
//! 127.0.0.1:5432, trust auth, with PostGIS), dropped when the test ends;
//! and psql, to talk to it as any role.

use std::process::{Command, Output};

pub const HOST: &str = "127.0.0.1";
pub const PORT: &str = "5432";

pub fn psql_as(db: &str, user: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-h",
            HOST,
            "-p",
            PORT,
            "-U",
            user,
            "-d",
            db,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql runs")
}

pub fn psql(db: &str, sql: &str) -> String {
    let o = psql_as(db, "postgres", sql);
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A fresh database, dropped when the test ends.
pub struct Db(pub String);

impl Db {
    /// `None` (and a message) when PostgreSQL with PostGIS is not reachable.
    pub fn fresh() -> Option<Db> {
        let required = std::env::var("KFM_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        let probe = Command::new("psql")
            .args([
                "-h", HOST, "-p", PORT, "-U", "postgres", "-d", "postgres", "-At", "-c",
            ])
            .arg("SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'")
            .output();
        let ok = matches!(&probe, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1");
        if !ok {
            let why = match probe {
                Ok(o) if o.status.success() => {
                    "PostGIS is not installed into it (postgresql-15-postgis-3)".to_owned()
                }
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => format!("psql: {e}"),
            };
            assert!(
                !required,
                "KFM_REQUIRE_SERVICES=1 but PostgreSQL/PostGIS at {HOST}:{PORT} is not usable: {why}"
            );
            eprintln!("SKIPPED: PostgreSQL with PostGIS at {HOST}:{PORT} is not usable: {why}");
            return None;
        }
        let name = format!("kfm_t_{}", uuid::Uuid::new_v4().simple());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        Some(Db(name))
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@{HOST}:{PORT}/{}", self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = psql_as(
            "postgres",
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
        );
    }
}
