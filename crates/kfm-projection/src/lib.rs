//! Rebuildable projections of the canonical store into PostgreSQL/PostGIS.
//!
//! The canonical stores are the object-store zones, the catalog triplet and
//! the ledger; a projection is derived from them and can always be dropped
//! and rebuilt. This crate owns:
//!
//! - the database side of the membrane (`schema`): KFM's three roles, its
//!   schemas, grants and row-level security;
//! - loading a published version (`load`): a table per layer by binary
//!   `COPY`, indexes after the load, switched in with the catalog rows in
//!   one transaction;
//! - the projector's pass (`sync`): verify every release pointer, load what
//!   changed, drop what is no longer published, record each table's
//!   projection digest in the ledger (`record`);
//! - proof (`verify`): each table's digest recomputed from the database
//!   and from the artifact, and compared with the ledger's record;
//! - the read side (`read`): what `kfm serve` with the PostGIS backend
//!   asks, as KFM's API roles, in statements `kfm-query` builds.
//!
//! It never writes the store, and never reads `raw/` or `work/`.

pub mod artifact;
pub mod connect;
pub mod drill;
pub mod geom;
pub mod load;
pub mod read;
pub mod record;
pub mod rows;
pub mod schema;
pub mod sync;
pub mod verify;

pub use connect::{PgTarget, connect, connect_to, describe};
pub use load::Loaded;
pub use schema::Layer;
pub use sync::{Projector, SyncReport, Zones};
pub use verify::{LayerCheck, VerifyReport};

/// Why a projection step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// PostgreSQL answered with an error, or the connection broke.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The database cannot be reached or logged into.
    #[error("{0}")]
    Connect(String),
    /// The database lacks what KFM needs and it could not be created.
    #[error("{0}")]
    Setup(String),
    /// The catalog of projections holds something KFM did not write.
    #[error("the projection catalog: {0}")]
    Catalog(String),
    /// The canonical store could not be read.
    #[error("the store: {0}")]
    Store(String),
    /// An artifact does not match its manifest, or does not parse.
    #[error("artifact: {0}")]
    Artifact(String),
    /// The ledger refused or could not be read.
    #[error("the ledger: {0}")]
    Ledger(String),
    #[error("cannot write the projection record: {0}")]
    Record(String),
    /// The load was stopped before its end (the COPY failed first).
    #[error("the load stopped")]
    Stopped,
}

impl From<tokio_postgres::Error> for ProjectionError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own message (and its detail) says what went wrong;
        // tokio-postgres's Display alone says only "db error".
        match e.as_db_error() {
            Some(db) => ProjectionError::Postgres(match db.detail() {
                Some(d) => format!("{} ({})", db.message(), d),
                None => db.message().to_owned(),
            }),
            None => ProjectionError::Postgres(e.to_string()),
        }
    }
}
