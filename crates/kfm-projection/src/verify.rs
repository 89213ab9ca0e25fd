//! `kfm projection verify`: every table proven equal to its canonical
//! artifact, by two digests computed independently (one from the artifact
//! the signed manifest names, one from the rows the database returns) and
//! the record the ledger holds.

use futures::{StreamExt, pin_mut};
use kfm_ledger::Ledger;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use crate::ProjectionError;
use crate::load::PG_EPOCH_US;
use crate::record;
use crate::rows::{Digester, LayerStats, canonical_props, derived};
use crate::schema::{self, CATALOG, DATA, RESTRICTED};
use crate::sync::Projector;

/// One layer's check.
#[derive(Debug, Clone)]
pub struct LayerCheck {
    pub dataset: String,
    pub layer: String,
    pub table: String,
    pub rows: u64,
    pub digest: String,
    /// Why it is not equal; `None`: proven equal.
    pub problem: Option<String>,
}

/// What verify found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub layers: Vec<LayerCheck>,
    /// Problems not tied to one layer (a published dataset not projected, a
    /// table no catalog row names, a pointer that does not verify).
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.layers.iter().all(|l| l.problem.is_none())
    }
}

/// What a table holds, as the database returns it.
pub struct TableScan {
    /// The projection digest of its rows, and how many there are.
    pub digest: (String, u64),
    /// The first row whose derived columns (`t`, `terms`) are not what its
    /// properties give.
    pub derived: Option<String>,
    /// The queryables and extent its rows give.
    pub queryables: kfm_query::Queryables,
    pub extent: Option<[f64; 4]>,
}

/// A `timestamptz` in binary, as microseconds since the Unix epoch.
struct Ts(i64);

impl<'a> tokio_postgres::types::FromSql<'a> for Ts {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let b: [u8; 8] = raw.try_into()?;
        Ok(Ts(i64::from_be_bytes(b) + PG_EPOCH_US))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// Reads a table back: its digest from the database's own output, and a
/// check of every column derived from the properties (a search term or a
/// time changed behind KFM's back would change answers the digest alone
/// does not cover).
pub async fn table_digest(
    client: &tokio_postgres::Client,
    schema_name: &str,
    table: &str,
    temporal: Option<&str>,
) -> Result<TableScan, ProjectionError> {
    let q = schema::qualified(schema_name, table)?;
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT ord, fid, fid_numeric, ST_AsEWKB(geom, 'NDR'), props::text, t, terms FROM {q} ORDER BY ord) TO STDOUT (FORMAT binary)"
        ))
        .await?;
    let rows = BinaryCopyOutStream::new(
        stream,
        &[
            Type::INT8,
            Type::TEXT,
            Type::BOOL,
            Type::BYTEA,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT_ARRAY,
        ],
    );
    pin_mut!(rows);
    let mut d = Digester::new();
    let mut stats = LayerStats::default();
    let mut problem = None;
    let bad = |what: String| ProjectionError::Catalog(format!("{schema_name}.{table}: {what}"));
    while let Some(r) = rows.next().await {
        let r = r?;
        let ord = r.try_get::<i64>(0)?;
        let text = r.try_get::<Option<&str>>(4)?;
        let props = match text {
            Some(t) => Some(canonical_props(t).map_err(|e| bad(format!("props: {e}")))?),
            None => None,
        };
        let geom = r.try_get::<Option<&[u8]>>(3)?;
        d.push(
            ord,
            r.try_get::<&str>(1)?,
            r.try_get::<bool>(2)?,
            geom,
            props.as_deref(),
        );
        let mut map: Option<serde_json::Map<String, serde_json::Value>> = match text {
            Some(t) => Some(serde_json::from_str(t).map_err(|e| bad(format!("props: {e}")))?),
            None => None,
        };
        if let Some(m) = map.as_mut() {
            kfm_query::normal::object(m);
        }
        let geometry = match geom {
            Some(g) => Some(crate::geom::decode(g).map_err(|e| bad(format!("row {ord}: {e}")))?),
            None => None,
        };
        stats_push(&mut stats, map.as_ref(), geometry.as_ref());
        if problem.is_none() {
            let (t, terms) = derived(map.as_ref(), temporal);
            let db_t = r.try_get::<Option<Ts>>(5)?.map(|t| t.0);
            let db_terms = r.try_get::<Vec<String>>(6)?;
            if db_t != t {
                problem = Some(format!(
                    "row {ord}: its time (t) is not its properties' time"
                ));
            } else if db_terms != terms {
                problem = Some(format!(
                    "row {ord}: its search terms are not its properties' words"
                ));
            }
        }
    }
    let (queryables, extent) = stats.finish();
    Ok(TableScan {
        digest: d.finish(),
        derived: problem,
        queryables,
        extent,
    })
}

fn stats_push(
    stats: &mut LayerStats,
    props: Option<&serde_json::Map<String, serde_json::Value>>,
    geometry: Option<&geojson::Geometry>,
) {
    stats.observe(props, geometry.map(|g| &g.value));
}

impl Projector {
    /// Proves every projected table equal to its canonical artifact, every
    /// published dataset projected at its published version, every layer
    /// recorded in the ledger, and no other table present.
    pub async fn verify(&mut self, ledger: &Ledger) -> Result<VerifyReport, ProjectionError> {
        let mut report = VerifyReport::default();
        self.client
            .batch_execute(&format!("SET ROLE {}", schema::PROJECTOR))
            .await?;
        let mut named = std::collections::HashSet::new();
        let pointers = self.pointers().await?;
        let mut projected = self.projected().await?;
        for (ds, bytes) in pointers {
            let projected_digest = projected.remove(&ds);
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    report.problems.push(format!("{ds}: {e}"));
                    continue;
                }
            };
            let v = match self.verified(ledger, &ds, &bytes).await {
                Ok(v) => v,
                Err(e) => {
                    report
                        .problems
                        .push(format!("{ds}: the release pointer does not verify: {e}"));
                    continue;
                }
            };
            match projected_digest.map(|(d, _)| d) {
                None => {
                    report.problems.push(format!(
                        "{ds}: published ({}) but not projected; run `kfm projection run`",
                        v.manifest.version_id
                    ));
                    continue;
                }
                Some(d) if d != v.pointer.manifest_digest => {
                    report.problems.push(format!(
                        "{ds}: projected from manifest {d}, but {} is published; run `kfm projection run`",
                        v.pointer.manifest_digest
                    ));
                    continue;
                }
                Some(_) => {}
            }
            for (layer, path, digest) in Self::layers_of(&v.manifest) {
                let row = self
                    .client
                    .query_opt(
                        &format!(
                            "SELECT schema_name, table_name, rows, projection_digest, artifact_digest, ledger_index, queryables::text, extent FROM {CATALOG}.layers WHERE dataset = $1 AND layer = $2"
                        ),
                        &[&ds, &layer.as_str()],
                    )
                    .await?;
                let Some(row) = row else {
                    report.problems.push(format!(
                        "{ds}: the {} layer is not projected",
                        layer.as_str()
                    ));
                    continue;
                };
                let (s, t): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                named.insert((s.clone(), t.clone()));
                let recorded_rows = row.try_get::<_, i64>(2)? as u64;
                let recorded: String = row.try_get(3)?;
                let mut check = LayerCheck {
                    dataset: ds.clone(),
                    layer: layer.as_str().into(),
                    table: format!("{s}.{t}"),
                    rows: recorded_rows,
                    digest: recorded.clone(),
                    problem: None,
                };
                check.problem = self
                    .check_layer(
                        ledger,
                        (&s, &t),
                        &path,
                        &digest,
                        v.manifest.temporal_property.as_deref(),
                        &row,
                    )
                    .await?;
                report.layers.push(check);
            }
        }
        for (ds, _) in projected {
            report.problems.push(format!(
                "{ds}: projected but no longer published; run `kfm projection run`"
            ));
        }
        let tables = self
            .client
            .query(
                "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY($1) ORDER BY 1, 2",
                &[&vec![DATA, RESTRICTED]],
            )
            .await?;
        for t in tables {
            let key = (t.try_get::<_, String>(0)?, t.try_get::<_, String>(1)?);
            if !named.contains(&key) {
                report.problems.push(format!(
                    "{}.{}: a table no current projection names",
                    key.0, key.1
                ));
            }
        }
        self.client.batch_execute("RESET ROLE").await?;
        Ok(report)
    }

    async fn check_layer(
        &self,
        ledger: &Ledger,
        (s, t): (&str, &str),
        path: &str,
        digest: &kfm_core::Digest,
        temporal: Option<&str>,
        row: &tokio_postgres::Row,
    ) -> Result<Option<String>, ProjectionError> {
        let recorded_rows = row.try_get::<_, i64>(2)? as u64;
        let recorded: String = row.try_get(3)?;
        let artifact_digest: String = row.try_get(4)?;
        if artifact_digest != digest.to_string() {
            return Ok(Some(format!(
                "loaded from artifact {artifact_digest}, the manifest names {digest}"
            )));
        }
        let (canonical, n) = match self.scan_artifact(path, digest, (), |_, _| {}).await {
            Ok((d, _)) => d,
            Err(e) => return Ok(Some(e.to_string())),
        };
        let scan = match table_digest(&self.client, s, t, temporal).await {
            Ok(x) => x,
            Err(e) => return Ok(Some(format!("cannot read the table: {e}"))),
        };
        let (in_db, m) = scan.digest.clone();
        if in_db != canonical || m != n {
            return Ok(Some(format!(
                "the table ({m} rows, {in_db}) is not its artifact {path} ({n} rows, {canonical})"
            )));
        }
        if let Some(p) = scan.derived {
            return Ok(Some(p));
        }
        let stored_q: Option<String> = row.try_get(6)?;
        let stored_q: Option<kfm_query::Queryables> = stored_q
            .as_deref()
            .and_then(|q| serde_json::from_str(q).ok());
        if stored_q.as_ref() != Some(&scan.queryables) {
            return Ok(Some(
                "the catalog's queryables are not what the table's rows give".into(),
            ));
        }
        let stored_e: Option<Vec<f64>> = row.try_get(7)?;
        if stored_e != scan.extent.map(|e| e.to_vec()) {
            return Ok(Some(
                "the catalog's extent is not the table's rows' extent".into(),
            ));
        }
        if recorded != canonical || recorded_rows != n {
            return Ok(Some(format!(
                "the catalog records {recorded} ({recorded_rows} rows); the artifact and the table are {canonical} ({n} rows)"
            )));
        }
        let Some(index) = row.try_get::<_, Option<i64>>(5)? else {
            return Ok(Some(
                "not yet recorded in the ledger; run `kfm projection run`".into(),
            ));
        };
        match record::read(ledger, self.key(), index as u64).await {
            Ok(r)
                if r.projection_digest.as_deref() == Some(canonical.as_str())
                    && r.table.as_deref() == Some(t)
                    && r.schema.as_deref() == Some(s) =>
            {
                Ok(None)
            }
            Ok(_) => Ok(Some(format!(
                "ledger entry {index} records another table or digest"
            ))),
            Err(e) => Ok(Some(e.to_string())),
        }
    }
}
