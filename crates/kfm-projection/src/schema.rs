//! The database side of the membrane: KFM's roles, schemas, grants and
//! row-level security, created idempotently.
//!
//! Three roles and no others:
//! - `kfm_projector` owns the schemas and every projected table; only it writes.
//! - `kfm_api` is the API's public role: it reads the catalog of projections
//!   and the `kfm_data` schema (generalised layers, and precise layers of
//!   `public` datasets). It has no privilege on `kfm_restricted`, and is not
//!   a member of any role that has.
//! - `kfm_api_precise` is what the API connects as once a decision allows
//!   precise reads; it alone may read `kfm_restricted`.
//!
//! Every projected table has row-level security enabled with a policy only
//! for the roles allowed to read it, so a grant given by mistake still
//! returns no row to anyone else.

use tokio_postgres::Client;

use crate::ProjectionError;

pub const PROJECTOR: &str = "kfm_projector";
pub const API: &str = "kfm_api";
pub const API_PRECISE: &str = "kfm_api_precise";
/// Every role KFM creates.
pub const ROLES: [&str; 3] = [PROJECTOR, API, API_PRECISE];

/// The catalog of projections (which table serves which layer).
pub const CATALOG: &str = "kfm";
/// Layers the public role may read.
pub const DATA: &str = "kfm_data";
/// Precise layers of datasets that are not `public`.
pub const RESTRICTED: &str = "kfm_restricted";

/// The shape of a projected table this build writes and reads: 2 added the
/// `t` (time) and `terms` (search) columns and the layer's queryables and
/// extent in the catalog. A projection of another format is loaded again.
pub const FORMAT: i32 = 2;

/// The two layers a published version can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The artifact with role `data`: coordinates as published.
    Precise,
    /// The generalised derivative (role `generalized`).
    Generalized,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Precise => "precise",
            Layer::Generalized => "generalized",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "precise" => Some(Layer::Precise),
            "generalized" => Some(Layer::Generalized),
            _ => None,
        }
    }
}

/// Which schema a layer of a dataset with `policy_label` goes to.
///
/// Invariant: a precise layer is readable by the public role only when its
/// dataset is labelled `public`; every other precise layer is in
/// `kfm_restricted`.
pub fn schema_for(layer: Layer, policy_label: &str) -> &'static str {
    match layer {
        Layer::Generalized => DATA,
        Layer::Precise if policy_label == "public" => DATA,
        Layer::Precise => RESTRICTED,
    }
}

/// The table of one layer of one version: `<dataset>_v<N>_<p|g>`, with the
/// id's `-` as `_` so that SQL users need no quotes (ids never hold `_`, so
/// no two ids meet). Ids are 2-64 characters, so a name past PostgreSQL's
/// 63 bytes is shortened with a digest of the whole.
pub fn table_for(dataset: &str, version: u64, layer: Layer) -> String {
    let tag = match layer {
        Layer::Precise => 'p',
        Layer::Generalized => 'g',
    };
    let full = format!("{}_v{version}_{tag}", dataset.replace('-', "_"));
    if full.len() <= 63 {
        return full;
    }
    let d = kfm_core::Digest::of(full.as_bytes()).hex();
    let keep = 63 - 17;
    format!("{}_{}", &full[..keep], &d[..16])
}

/// `"schema"."table"`, refusing any name that is not KFM's own shape.
/// Why: identifiers cannot be bound as parameters, so the only text that
/// reaches SQL is text this function has checked.
pub fn qualified(schema: &str, table: &str) -> Result<String, ProjectionError> {
    for n in [schema, table] {
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(ProjectionError::Catalog(format!(
                "{n:?} is not a name KFM gives a schema or table"
            )));
        }
    }
    Ok(format!("\"{schema}\".\"{table}\""))
}

/// PostgreSQL error codes met while creating what already exists, when
/// two processes (or two test databases of one server: roles are global)
/// create it at once.
fn lost_a_race(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        matches!(
            c.code(),
            "42710" /* duplicate_object */ | "23505" /* unique_violation */ | "XX000"
        )
    })
}

/// Whether everything this module creates is already there.
async fn ready(client: &Client) -> Result<bool, ProjectionError> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = ANY($1))::int,
                    to_regclass('kfm.projections') IS NOT NULL,
                    to_regclass('kfm.layers') IS NOT NULL,
                    (SELECT count(*) FROM pg_extension WHERE extname = 'postgis')::int,
                    (SELECT count(*) FROM information_schema.columns
                      WHERE table_schema = 'kfm' AND table_name = 'layers' AND column_name = 'format')::int",
            &[&ROLES.to_vec()],
        )
        .await?;
    Ok(row.try_get::<_, i32>(0)? == 3
        && row.try_get::<_, bool>(1)?
        && row.try_get::<_, bool>(2)?
        && row.try_get::<_, i32>(3)? == 1
        && row.try_get::<_, i32>(4)? == 1)
}

/// Creates the extension, roles, schemas, grants and catalog tables that
/// are missing. Needs a role that may create roles and extensions (a
/// database administrator, once); a projector that connects as
/// `kfm_projector` itself finds them there.
pub async fn bootstrap(client: &Client) -> Result<(), ProjectionError> {
    if ready(client).await? {
        return Ok(());
    }
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS postgis")
        .await
        .or_else(|e| if lost_a_race(&e) { Ok(()) } else { Err(e) })
        .map_err(|e| {
            ProjectionError::Setup(format!(
                "cannot create the postgis extension ({e}); install postgresql-15-postgis-3 (Debian) into this server, or have an administrator run CREATE EXTENSION postgis in the database"
            ))
        })?;
    for role in ROLES {
        // LOGIN: each is a client role (passwords are set by the
        // administrator, never by KFM); none inherits another.
        let sql = format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; END IF; END $$"
        );
        for attempt in 0..5 {
            match client.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if lost_a_race(&e) && attempt < 4 => continue,
                Err(e) => {
                    return Err(ProjectionError::Setup(format!(
                        "cannot create role {role} ({e}); connect once as a role with CREATEROLE (the database administrator) so that KFM can create its three roles"
                    )));
                }
            }
        }
    }
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .try_get(0)?;
    let setup = format!(
        "GRANT {PROJECTOR} TO current_user;
         GRANT CONNECT, CREATE ON DATABASE \"{db}\" TO {PROJECTOR};
         GRANT CONNECT ON DATABASE \"{db}\" TO {API}, {API_PRECISE};
         CREATE SCHEMA IF NOT EXISTS {CATALOG} AUTHORIZATION {PROJECTOR};
         CREATE SCHEMA IF NOT EXISTS {DATA} AUTHORIZATION {PROJECTOR};
         CREATE SCHEMA IF NOT EXISTS {RESTRICTED} AUTHORIZATION {PROJECTOR};
         REVOKE ALL ON SCHEMA {CATALOG}, {DATA}, {RESTRICTED} FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA {CATALOG}, {DATA} TO {API}, {API_PRECISE};
         GRANT USAGE ON SCHEMA {RESTRICTED} TO {API_PRECISE};
         SET ROLE {PROJECTOR};
         CREATE TABLE IF NOT EXISTS {CATALOG}.projections (
             dataset text PRIMARY KEY,
             version bigint NOT NULL,
             version_id text NOT NULL,
             manifest_digest text NOT NULL,
             pointer_ledger_index bigint NOT NULL,
             policy_label text NOT NULL,
             projected_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE IF NOT EXISTS {CATALOG}.layers (
             dataset text NOT NULL REFERENCES {CATALOG}.projections ON DELETE CASCADE,
             layer text NOT NULL CHECK (layer IN ('precise', 'generalized')),
             schema_name text NOT NULL,
             table_name text NOT NULL,
             rows bigint NOT NULL,
             projection_digest text NOT NULL,
             artifact text NOT NULL,
             artifact_digest text NOT NULL,
             ledger_index bigint,
             PRIMARY KEY (dataset, layer),
             UNIQUE (schema_name, table_name)
         );
         ALTER TABLE {CATALOG}.projections ADD COLUMN IF NOT EXISTS temporal_property text;
         ALTER TABLE {CATALOG}.layers ADD COLUMN IF NOT EXISTS format int NOT NULL DEFAULT 1;
         ALTER TABLE {CATALOG}.layers ADD COLUMN IF NOT EXISTS queryables jsonb;
         ALTER TABLE {CATALOG}.layers ADD COLUMN IF NOT EXISTS extent float8[];
         GRANT SELECT ON {CATALOG}.projections, {CATALOG}.layers TO {API}, {API_PRECISE};
         RESET ROLE;"
    );
    // Grants on roles are cluster-wide rows: two databases bootstrapping at
    // once can meet "tuple concurrently updated"; the batch is idempotent.
    for attempt in 0..5 {
        match client.batch_execute(&setup).await {
            Ok(()) => return Ok(()),
            Err(e) if lost_a_race(&e) && attempt < 4 => {
                let _ = client.batch_execute("RESET ROLE").await;
                tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
            }
            Err(e) => {
                return Err(ProjectionError::Setup(format!(
                    "cannot create KFM's schemas: {}",
                    ProjectionError::from(e)
                )));
            }
        }
    }
    Ok(())
}
