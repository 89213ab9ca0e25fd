//! Connecting to the configured PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use crate::ProjectionError;

/// Where the projections live: a `postgres://` URL without its password,
/// and the password, resolved by the caller from a reference (`env:`,
/// `file:`) or from `PGPASSWORD`.
#[derive(Clone)]
pub struct PgTarget {
    pub url: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Connects, the connection driven by a task of its own.
pub async fn connect(target: &PgTarget) -> Result<Client, ProjectionError> {
    connect_to(target, None).await
}

/// `host:port/database` of the target (or of `dbname` on its server):
/// what may be printed and recorded about it.
pub fn describe(target: &PgTarget, dbname: Option<&str>) -> String {
    let Ok(c) = Config::from_str(&target.url) else {
        return "(an unparsable URL)".into();
    };
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let db = dbname
        .or(c.get_dbname())
        .or(c.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The connection settings of `target` (on `dbname` instead of its
/// database when given): its URL parsed, a password in it refused, the
/// password by reference applied, a connect timeout.
pub(crate) fn config(target: &PgTarget, dbname: Option<&str>) -> Result<Config, ProjectionError> {
    let mut config = Config::from_str(&target.url).map_err(|e| {
        ProjectionError::Connect(format!(
            "postgres.url {:?} does not parse: {e}; use postgres://USER@HOST:PORT/DATABASE",
            target.url
        ))
    })?;
    if config.get_password().is_some() {
        return Err(ProjectionError::Connect(
            "postgres.url carries a password: give it by reference in postgres.password (env:NAME or file:PATH), or in PGPASSWORD".into(),
        ));
    }
    if let Some(p) = &target.password {
        config.password(p);
    }
    if let Some(db) = dbname {
        config.dbname(db);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(config)
}

/// Connects to the target's server, to `dbname` instead of its database
/// when given (a drill's scratch database, or the maintenance database
/// that creates it).
pub async fn connect_to(
    target: &PgTarget,
    dbname: Option<&str>,
) -> Result<Client, ProjectionError> {
    let mut config = config(target, dbname)?;
    config.application_name("kfm");
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        ProjectionError::Connect(format!(
            "cannot connect to PostgreSQL at {}: {e}",
            describe(target, dbname)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the PostgreSQL connection ended");
        }
    });
    Ok(client)
}
