//! Loading one published version: every layer into a new table by binary
//! `COPY`, indexes after the load, then the switch, all in one transaction.
//!
//! Invariant: a version is visible (named by `kfm.projections` and
//! `kfm.layers`) only complete. The tables, their rows, indexes, grants and
//! the catalog rows that name them commit together or not at all:
//! PostgreSQL's DDL is transactional, so a projector killed anywhere leaves
//! the previous state, and nothing to clean up.

use bytes::{BufMut, BytesMut};
use futures::pin_mut;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Transaction};

use crate::ProjectionError;
use crate::artifact::{Body, Check, checked};
use crate::rows::{Digester, LayerStats, Row};
use crate::schema::{self, API, API_PRECISE, CATALOG, DATA, FORMAT, Layer};

/// One artifact to load: its bytes, and the check of their digest against
/// the signed manifest (awaited before the load may commit).
pub struct Source {
    pub layer: Layer,
    pub artifact: String,
    pub artifact_digest: String,
    pub body: Body,
    pub check: Check,
}

/// What a layer's load produced, as the catalog records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub layer: Layer,
    pub schema: String,
    pub table: String,
    pub rows: u64,
    pub digest: String,
    pub artifact: String,
    pub artifact_digest: String,
    /// What queries on the layer are typed by (stored beside the table).
    pub queryables: kfm_query::Queryables,
    /// The layer's extent, `[minx, miny, maxx, maxy]`.
    pub extent: Option<[f64; 4]>,
}

/// The version being loaded.
pub struct Version<'a> {
    pub dataset: &'a str,
    pub version: u64,
    pub version_id: &'a str,
    pub manifest_digest: &'a str,
    pub pointer_ledger_index: u64,
    pub policy_label: &'a str,
    /// The property holding each feature's time, if the dataset has one.
    pub temporal: Option<&'a str>,
}

/// Rows sent from the parsing thread to the COPY at a time.
const BATCH: usize = 2048;

/// Bytes sent as they are (EWKB for `geometry`), or NULL.
#[derive(Debug)]
struct Raw<'a>(Option<&'a [u8]>);

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// A `timestamptz` in PostgreSQL's binary form: microseconds since
/// 2000-01-01 (ours count from 1970-01-01).
#[derive(Debug)]
pub(crate) struct Micros(pub Option<i64>);

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
pub(crate) const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl ToSql for Micros {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(t) => {
                out.put_i64(t - PG_EPOCH_US);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
    to_sql_checked!();
}

/// JSON text as jsonb's binary input (a version byte, then the text).
#[derive(Debug)]
struct Jsonb<'a>(Option<&'a [u8]>);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(b) => {
                out.put_u8(1);
                out.put_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}

/// PostGIS's `geometry` type, whose OID differs per database.
pub async fn geometry_type(client: &Client) -> Result<Type, ProjectionError> {
    let row = client
        .query_opt(
            "SELECT t.oid, n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typname = 'geometry'",
            &[],
        )
        .await?
        .ok_or_else(|| ProjectionError::Setup("PostGIS's geometry type is missing".into()))?;
    Ok(Type::new(
        "geometry".into(),
        row.try_get::<_, u32>(0)?,
        tokio_postgres::types::Kind::Simple,
        row.try_get::<_, String>(1)?,
    ))
}

/// What parsing a layer yields besides its rows.
type Parsed = ((String, u64), LayerStats);

/// Parses an artifact on a blocking thread, sending rows in batches; the
/// digest of what was sent, and the layer's stats, come back when it ends.
fn parse(
    body: Body,
    temporal: Option<String>,
    tx: mpsc::Sender<Vec<Row>>,
) -> tokio::task::JoinHandle<Result<Parsed, ProjectionError>> {
    tokio::task::spawn_blocking(move || {
        let mut digest = Digester::new();
        let mut stats = LayerStats::default();
        let mut batch = Vec::with_capacity(BATCH);
        let mut stopped = false;
        let res = crate::artifact::for_each_feature_in(body, |ord, f| {
            let row = Row::of(ord, &f, temporal.as_deref(), Some(&mut stats))
                .map_err(|e| e.to_string())?;
            digest.push_row(&row);
            batch.push(row);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.blocking_send(full).is_err() {
                    stopped = true;
                    return Err("the load stopped".into());
                }
            }
            Ok(())
        });
        if stopped {
            return Err(ProjectionError::Stopped);
        }
        res.map_err(ProjectionError::Artifact)?;
        if !batch.is_empty() && tx.blocking_send(batch).is_err() {
            return Err(ProjectionError::Stopped);
        }
        Ok((digest.finish(), stats))
    })
}

async fn copy_layer(
    tx: &Transaction<'_>,
    geometry: &Type,
    src: Source,
    v: &Version<'_>,
) -> Result<Loaded, ProjectionError> {
    let schema_name = schema::schema_for(src.layer, v.policy_label);
    let table = schema::table_for(v.dataset, v.version, src.layer);
    let q = schema::qualified(schema_name, &table)?;
    // A rebuild of the version being served replaces its table inside
    // this transaction; readers keep the old one until the commit.
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS {q};
         CREATE TABLE {q} (
             ord bigint NOT NULL,
             fid text NOT NULL,
             fid_numeric boolean NOT NULL,
             geom geometry(Geometry, 4326),
             props jsonb,
             t timestamptz,
             terms text[] COLLATE \"C\" NOT NULL
         )"
    ))
    .await?;
    let sink = tx
        .copy_in(&format!(
            "COPY {q} (ord, fid, fid_numeric, geom, props, t, terms) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::BOOL,
            geometry.clone(),
            Type::JSONB,
            Type::TIMESTAMPTZ,
            Type::TEXT_ARRAY,
        ],
    );
    pin_mut!(writer);
    let started = std::time::Instant::now();
    let (rows_tx, mut rows_rx) = mpsc::channel::<Vec<Row>>(4);
    let parser = parse(src.body, v.temporal.map(str::to_owned), rows_tx);
    while let Some(batch) = rows_rx.recv().await {
        for r in &batch {
            writer
                .as_mut()
                .write(&[
                    &r.ord,
                    &r.fid,
                    &r.fid_numeric,
                    &Raw(r.geom.as_deref()),
                    &Jsonb(r.props.as_deref()),
                    &Micros(r.t),
                    &r.terms,
                ])
                .await?;
        }
    }
    let parsed = parser
        .await
        .map_err(|e| ProjectionError::Artifact(format!("the parser stopped: {e}")))?;
    // Invariant: rows from a streamed artifact are kept only if its digest
    // is the signed manifest's (else this transaction rolls back).
    let ((digest, rows), stats) = checked(src.check, parsed).await?;
    let (queryables, extent) = stats.finish();
    let copied = writer.finish().await?;
    if copied != rows {
        return Err(ProjectionError::Artifact(format!(
            "{}: {copied} rows copied, {rows} parsed",
            src.artifact
        )));
    }
    let copy_s = started.elapsed().as_secs_f64();
    // Indexes after the load (one sort each, not one insert per row), then
    // the grants and the row-level security that are the membrane.
    let readers = if schema_name == DATA {
        format!("{API}, {API_PRECISE}")
    } else {
        API_PRECISE.to_owned()
    };
    let idx = |suffix: &str| {
        let mut n = format!("{table}_{suffix}");
        n.truncate(63);
        n
    };
    // The time index only where there is time to index.
    let time_index = if v.temporal.is_some() {
        format!("CREATE INDEX \"{}\" ON {q} (t);", idx("t"))
    } else {
        String::new()
    };
    tx.batch_execute(&format!(
        "ALTER TABLE {q} ADD CONSTRAINT \"{pk}\" PRIMARY KEY (ord);
         CREATE UNIQUE INDEX \"{fi}\" ON {q} (fid);
         CREATE INDEX \"{gi}\" ON {q} USING gist (geom);
         CREATE INDEX \"{ti}\" ON {q} USING gin (terms);
         {time_index}
         ALTER TABLE {q} ENABLE ROW LEVEL SECURITY;
         CREATE POLICY read ON {q} FOR SELECT TO {readers} USING (true);
         REVOKE ALL ON {q} FROM PUBLIC;
         GRANT SELECT ON {q} TO {readers};
         ANALYZE {q}",
        pk = idx("pk"),
        fi = idx("fid"),
        gi = idx("geom"),
        ti = idx("terms"),
    ))
    .await?;
    tracing::debug!(
        rows,
        copy_s,
        index_s = started.elapsed().as_secs_f64() - copy_s,
        "layer loaded"
    );
    Ok(Loaded {
        layer: src.layer,
        schema: schema_name.to_owned(),
        table,
        rows,
        digest,
        artifact: src.artifact,
        artifact_digest: src.artifact_digest,
        queryables,
        extent,
    })
}

/// Loads `sources` as the projection of `v` and switches the dataset to it,
/// dropping the tables of the version it replaces.
pub async fn load(
    client: &mut Client,
    geometry: &Type,
    v: &Version<'_>,
    sources: Vec<Source>,
) -> Result<Vec<Loaded>, ProjectionError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL ROLE {}", schema::PROJECTOR))
        .await?;
    // One load of a dataset at a time, whoever runs it.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('kfm.projection'), hashtext($1))",
        &[&v.dataset],
    )
    .await?;
    let mut loaded = Vec::new();
    for src in sources {
        loaded.push(copy_layer(&tx, geometry, src, v).await?);
    }
    let old = tx
        .query(
            &format!("SELECT schema_name, table_name FROM {CATALOG}.layers WHERE dataset = $1"),
            &[&v.dataset],
        )
        .await?;
    tx.execute(
        &format!("DELETE FROM {CATALOG}.projections WHERE dataset = $1"),
        &[&v.dataset],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO {CATALOG}.projections (dataset, version, version_id, manifest_digest, pointer_ledger_index, policy_label, temporal_property) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ),
        &[
            &v.dataset,
            &(v.version as i64),
            &v.version_id,
            &v.manifest_digest,
            &(v.pointer_ledger_index as i64),
            &v.policy_label,
            &v.temporal,
        ],
    )
    .await?;
    for l in &loaded {
        tx.execute(
            &format!(
                "INSERT INTO {CATALOG}.layers (dataset, layer, schema_name, table_name, rows, projection_digest, artifact, artifact_digest, format, queryables, extent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, $11)"
            ),
            &[
                &v.dataset,
                &l.layer.as_str(),
                &l.schema,
                &l.table,
                &(l.rows as i64),
                &l.digest,
                &l.artifact,
                &l.artifact_digest,
                &FORMAT,
                &serde_json::to_string(&l.queryables).map_err(|e| {
                    ProjectionError::Catalog(format!("the queryables cannot be encoded: {e}"))
                })?,
                &l.extent.map(|e| e.to_vec()),
            ],
        )
        .await?;
    }
    for o in old {
        let (s, t): (String, String) = (o.try_get(0)?, o.try_get(1)?);
        if loaded.iter().any(|l| l.schema == s && l.table == t) {
            continue;
        }
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS {}",
            schema::qualified(&s, &t)?
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(loaded)
}

/// Removes a dataset's projection (its pointer is gone or no longer
/// verifies), in one transaction.
pub async fn drop_dataset(
    client: &mut Client,
    dataset: &str,
) -> Result<Vec<String>, ProjectionError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL ROLE {}", schema::PROJECTOR))
        .await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('kfm.projection'), hashtext($1))",
        &[&dataset],
    )
    .await?;
    let old = tx
        .query(
            &format!("SELECT schema_name, table_name FROM {CATALOG}.layers WHERE dataset = $1"),
            &[&dataset],
        )
        .await?;
    tx.execute(
        &format!("DELETE FROM {CATALOG}.projections WHERE dataset = $1"),
        &[&dataset],
    )
    .await?;
    let mut dropped = Vec::new();
    for o in old {
        let (s, t): (String, String) = (o.try_get(0)?, o.try_get(1)?);
        let q = schema::qualified(&s, &t)?;
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {q}"))
            .await?;
        dropped.push(format!("{s}.{t}"));
    }
    tx.commit().await?;
    Ok(dropped)
}
