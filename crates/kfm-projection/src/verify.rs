//! `kfm projection verify`: every table proven equal to its canonical
//! artifact, by two digests computed independently (one from the artifact
//! the signed manifest names, one from the rows the database returns) and
//! the record the ledger holds.

use futures::{StreamExt, pin_mut};
use kfm_ledger::Ledger;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use crate::ProjectionError;
use crate::record;
use crate::rows::{Digester, canonical_props};
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

/// The digest of a table as the database returns it.
pub async fn table_digest(
    client: &tokio_postgres::Client,
    schema_name: &str,
    table: &str,
) -> Result<(String, u64), ProjectionError> {
    let q = schema::qualified(schema_name, table)?;
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT ord, fid, fid_numeric, ST_AsEWKB(geom, 'NDR'), props::text FROM {q} ORDER BY ord) TO STDOUT (FORMAT binary)"
        ))
        .await?;
    let rows = BinaryCopyOutStream::new(
        stream,
        &[Type::INT8, Type::TEXT, Type::BOOL, Type::BYTEA, Type::TEXT],
    );
    pin_mut!(rows);
    let mut d = Digester::new();
    while let Some(r) = rows.next().await {
        let r = r?;
        let props = match r.try_get::<Option<&str>>(4)? {
            Some(t) => Some(canonical_props(t).map_err(|e| {
                ProjectionError::Catalog(format!("{schema_name}.{table}: props: {e}"))
            })?),
            None => None,
        };
        d.push(
            r.try_get::<i64>(0)?,
            r.try_get::<&str>(1)?,
            r.try_get::<bool>(2)?,
            r.try_get::<Option<&[u8]>>(3)?,
            props.as_deref(),
        );
    }
    Ok(d.finish())
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
            match projected_digest {
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
                            "SELECT schema_name, table_name, rows, projection_digest, artifact_digest, ledger_index FROM {CATALOG}.layers WHERE dataset = $1 AND layer = $2"
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
                    .check_layer(ledger, &s, &t, &path, &digest, &row)
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
        s: &str,
        t: &str,
        path: &str,
        digest: &kfm_core::Digest,
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
        let (in_db, m) = match table_digest(&self.client, s, t).await {
            Ok(x) => x,
            Err(e) => return Ok(Some(format!("cannot read the table: {e}"))),
        };
        if in_db != canonical || m != n {
            return Ok(Some(format!(
                "the table ({m} rows, {in_db}) is not its artifact {path} ({n} rows, {canonical})"
            )));
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
