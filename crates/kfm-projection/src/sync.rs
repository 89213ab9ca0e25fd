//! The projector's pass: make the database hold exactly what is published.
//!
//! Every release pointer is verified end to end (manifest signature, the
//! ledger entry it names) before its version is loaded; every artifact is
//! read back and checked against the signed manifest's digest. A dataset
//! whose pointer is gone, or no longer verifies, loses its projection (fail
//! closed: nothing serves from a table whose canonical source is in doubt).

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use kfm_core::Digest;
use kfm_core::dsse::Signer;
use kfm_ledger::Ledger;
use kfm_pipeline::records::Manifest;
use kfm_store::{ReadOnly, zones};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::ProjectionError;
use crate::artifact::{Body, Check, WHOLE_MAX, checked, for_each_feature_in};
use crate::load::{self, Loaded, Source, Version};
use crate::record::{self, KIND, ProjectionRecord};
use crate::rows::{Digester, Row};
use crate::schema::{self, CATALOG, DATA, Layer, RESTRICTED};

/// Read handles on the zones a projection is built from.
#[derive(Clone)]
pub struct Zones {
    pub published: ReadOnly<zones::Published>,
    pub processed: ReadOnly<zones::Processed>,
    pub catalog: ReadOnly<zones::Catalog>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Versions loaded: (dataset, version id, layers).
    pub loaded: Vec<(String, String, Vec<Loaded>)>,
    /// Datasets whose projection was removed, with why.
    pub dropped: Vec<(String, String)>,
    /// Datasets already projected at their published version.
    pub unchanged: Vec<String>,
    /// Ledger records appended (a resumed pass appends what a crash left
    /// unrecorded; a repeated pass appends nothing).
    pub recorded: usize,
    /// Datasets that could not be projected, and why.
    pub problems: Vec<String>,
}

/// A connected projector.
pub struct Projector {
    pub(crate) client: Client,
    geometry: Type,
    zones: Zones,
    key: VerifyingKey,
    signer: Signer,
    /// Artifacts up to this many bytes are read whole, larger ones streamed.
    whole_max: u64,
}

/// The published pointers: dataset → pointer bytes, or why it could not be
/// read.
pub(crate) type Pointers = Vec<(String, Result<Vec<u8>, String>)>;

impl Projector {
    /// Prepares the database (roles, schemas, catalog: see `schema`) and
    /// returns a projector on it.
    pub async fn new(
        client: Client,
        zones: Zones,
        key: VerifyingKey,
        signer: Signer,
    ) -> Result<Self, ProjectionError> {
        schema::bootstrap(&client).await?;
        let geometry = load::geometry_type(&client).await?;
        Ok(Self {
            client,
            geometry,
            zones,
            key,
            signer,
            whole_max: WHOLE_MAX,
        })
    }

    /// Reads artifacts up to `bytes` whole and streams larger ones (default
    /// `artifact::WHOLE_MAX`): less for a host short of memory.
    pub fn read_whole_up_to(mut self, bytes: u64) -> Self {
        self.whole_max = bytes;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn key(&self) -> &VerifyingKey {
        &self.key
    }

    pub(crate) async fn pointers(&self) -> Result<Pointers, ProjectionError> {
        let listed = self
            .zones
            .published
            .list("")
            .await
            .map_err(|e| ProjectionError::Store(format!("cannot list published/: {e}")))?;
        let mut out = Vec::new();
        for o in listed {
            let Some(ds) = o.key.strip_suffix(".json") else {
                continue;
            };
            if ds.contains('/') {
                continue;
            }
            let bytes = self
                .zones
                .published
                .get(&o.key)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| format!("the release pointer cannot be read: {e}"));
            out.push((ds.to_owned(), bytes));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The release a pointer names, verified end to end (manifest
    /// signature and digest, the ledger entry it names).
    pub(crate) async fn verified(
        &self,
        ledger: &Ledger,
        ds: &str,
        pointer: &[u8],
    ) -> Result<kfm_pipeline::VerifiedRelease, String> {
        kfm_pipeline::verify_pointer(&self.zones.catalog, ledger, ds, pointer, &self.key).await
    }

    /// Reads an artifact the manifest names and checks its digest.
    pub(crate) async fn artifact(
        &self,
        path: &str,
        digest: &Digest,
    ) -> Result<Bytes, ProjectionError> {
        let rel = path.strip_prefix("processed/").ok_or_else(|| {
            ProjectionError::Artifact(format!("{path}: a projected artifact is under processed/"))
        })?;
        let bytes = self
            .zones
            .processed
            .get(rel)
            .await
            .map_err(|e| ProjectionError::Store(format!("{path}: {e}")))?;
        kfm_pipeline::release::check_artifact(path, &bytes, digest)
            .map_err(ProjectionError::Artifact)?;
        Ok(bytes)
    }

    /// An artifact's bytes, and the check of its digest: done already when
    /// it is read whole (up to `artifact::WHOLE_MAX`), else done by the
    /// task that streams it, once it has sent the last chunk. Whoever
    /// builds anything from a streamed body must await the check before
    /// keeping it (a load: before its commit).
    pub(crate) async fn open_artifact(
        &self,
        path: &str,
        digest: &Digest,
    ) -> Result<(Body, Check), ProjectionError> {
        let rel = path.strip_prefix("processed/").ok_or_else(|| {
            ProjectionError::Artifact(format!("{path}: a projected artifact is under processed/"))
        })?;
        let size = self
            .zones
            .processed
            .head(rel)
            .await
            .map_err(|e| ProjectionError::Store(format!("{path}: {e}")))?
            .ok_or_else(|| ProjectionError::Artifact(format!("{path}: missing from the store")))?
            .size;
        if size <= self.whole_max {
            let bytes = self.artifact(path, digest).await?;
            return Ok((Body::Whole(bytes), tokio::spawn(async { Ok(()) })));
        }
        let (_, mut chunks) = self
            .zones
            .processed
            .get_stream(rel)
            .await
            .map_err(|e| ProjectionError::Store(format!("{path}: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let (path, want) = (path.to_owned(), *digest);
        let check = tokio::spawn(async move {
            let mut h = Sha256::new();
            while let Some(c) = chunks.next().await {
                let c = c.map_err(|e| ProjectionError::Store(format!("{path}: {e}")))?;
                h.update(&c);
                if tx.send(c).await.is_err() {
                    return Err(ProjectionError::Stopped);
                }
            }
            let got = hex::encode(h.finalize());
            if got != want.hex() {
                return Err(ProjectionError::Artifact(format!(
                    "{path} has digest sha256:{got}, the signed manifest records {want}"
                )));
            }
            Ok(())
        });
        Ok((Body::Chunks(rx), check))
    }

    /// Parses an artifact on a blocking thread, handing each row to `on`
    /// with `state`; returns its projection digest and row count, and the
    /// state, once the artifact's own digest is checked.
    pub(crate) async fn scan_artifact<S: Send + 'static>(
        &self,
        path: &str,
        digest: &Digest,
        mut state: S,
        on: fn(&mut S, &Row),
    ) -> Result<((String, u64), S), ProjectionError> {
        let (body, check) = self.open_artifact(path, digest).await?;
        let (parsed, digest, state) = tokio::task::spawn_blocking(move || {
            let mut d = Digester::new();
            let r = for_each_feature_in(body, |ord, f| {
                let row = Row::of(ord, &f, None, None).map_err(|e| e.to_string())?;
                d.push_row(&row);
                on(&mut state, &row);
                Ok(())
            });
            (r, d.finish(), state)
        })
        .await
        .map_err(|e| ProjectionError::Artifact(format!("the parser stopped: {e}")))?;
        checked(check, parsed.map_err(ProjectionError::Artifact)).await?;
        Ok((digest, state))
    }

    /// The layers a manifest publishes: (layer, path, digest).
    pub(crate) fn layers_of(m: &Manifest) -> Vec<(Layer, String, Digest)> {
        m.artifacts
            .iter()
            .filter_map(|a| {
                let layer = match a.role.as_str() {
                    "data" => Layer::Precise,
                    "generalized" => Layer::Generalized,
                    _ => return None,
                };
                Some((layer, a.path.clone(), a.digest))
            })
            .collect()
    }

    /// Dataset → manifest digest of every projection in the catalog, and
    /// whether all its layers are of this build's format.
    pub(crate) async fn projected(
        &self,
    ) -> Result<HashMap<String, (String, bool)>, ProjectionError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT p.dataset, p.manifest_digest,
                            coalesce(bool_and(l.format = $1), true)
                     FROM {CATALOG}.projections p LEFT JOIN {CATALOG}.layers l USING (dataset)
                     GROUP BY p.dataset, p.manifest_digest"
                ),
                &[&schema::FORMAT],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect()
    }

    /// One pass: load what is published and not projected, drop what is
    /// projected and no longer published, record what is unrecorded.
    pub async fn sync(&mut self, ledger: &Ledger) -> Result<SyncReport, ProjectionError> {
        self.pass(ledger, false).await
    }

    async fn pass(&mut self, ledger: &Ledger, force: bool) -> Result<SyncReport, ProjectionError> {
        let mut report = SyncReport::default();
        let pointers = self.pointers().await?;
        let mut projected = self.projected().await?;
        for (ds, bytes) in pointers {
            let current = projected.remove(&ds);
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    // Unreadable is not "gone": what is projected stays.
                    report.problems.push(format!("{ds}: {e}"));
                    continue;
                }
            };
            let verified = match self.verified(ledger, &ds, &bytes).await {
                Ok(v) => v,
                Err(e) => {
                    report
                        .problems
                        .push(format!("{ds}: the release pointer does not verify: {e}"));
                    if current.is_some() {
                        self.drop(&ds, "its release pointer does not verify")
                            .await?;
                        report
                            .dropped
                            .push((ds, "the release pointer does not verify".into()));
                    }
                    continue;
                }
            };
            let (p, m) = (verified.pointer, verified.manifest);
            // Invariant: a projection is kept only if it is of the
            // published version and of the format this build reads.
            if !force
                && current
                    .as_ref()
                    .is_some_and(|(d, fmt)| *fmt && d == &p.manifest_digest)
            {
                report.unchanged.push(ds);
                continue;
            }
            match self
                .load_manifest(&m, &p.manifest_digest, p.ledger_index)
                .await
            {
                Ok(layers) => {
                    tracing::info!(version = %m.version_id, layers = layers.len(), "projected");
                    report.loaded.push((ds, m.version_id.clone(), layers));
                }
                Err(e @ (ProjectionError::Artifact(_) | ProjectionError::Store(_))) => {
                    report.problems.push(format!("{ds}: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        for (ds, _) in projected {
            self.drop(&ds, "it is no longer published").await?;
            report
                .dropped
                .push((ds, "it is no longer published".into()));
        }
        report.recorded = self.record_pending(ledger).await?;
        Ok(report)
    }

    async fn load_manifest(
        &mut self,
        m: &Manifest,
        manifest_digest: &str,
        pointer_ledger_index: u64,
    ) -> Result<Vec<Loaded>, ProjectionError> {
        let mut sources = Vec::new();
        for (layer, path, digest) in Self::layers_of(m) {
            let (body, check) = self.open_artifact(&path, &digest).await?;
            sources.push(Source {
                layer,
                artifact: path,
                artifact_digest: digest.to_string(),
                body,
                check,
            });
        }
        let v = Version {
            dataset: &m.dataset,
            version: m.version,
            version_id: &m.version_id,
            manifest_digest,
            pointer_ledger_index,
            policy_label: &m.policy_label,
            temporal: m.temporal_property.as_deref(),
        };
        load::load(&mut self.client, &self.geometry, &v, sources).await
    }

    async fn drop(&mut self, dataset: &str, why: &str) -> Result<(), ProjectionError> {
        let dropped = load::drop_dataset(&mut self.client, dataset).await?;
        tracing::info!(tables = dropped.len(), why, "projection dropped");
        Ok(())
    }

    /// Appends the ledger record of every layer and drop not yet recorded.
    async fn record_pending(&mut self, ledger: &Ledger) -> Result<usize, ProjectionError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT p.dataset, p.version, p.version_id, p.manifest_digest, l.layer, l.schema_name, l.table_name, l.rows, l.projection_digest, l.artifact, l.artifact_digest
                     FROM {CATALOG}.layers l JOIN {CATALOG}.projections p USING (dataset)
                     WHERE l.ledger_index IS NULL ORDER BY p.dataset, l.layer"
                ),
                &[],
            )
            .await?;
        let mut n = 0;
        for r in rows {
            let rec = ProjectionRecord {
                kind: KIND.into(),
                operation: "load".into(),
                dataset: r.try_get(0)?,
                version: r.try_get::<_, i64>(1)? as u64,
                version_id: r.try_get(2)?,
                manifest_digest: r.try_get(3)?,
                layer: Some(r.try_get(4)?),
                schema: Some(r.try_get(5)?),
                table: Some(r.try_get(6)?),
                rows: Some(r.try_get::<_, i64>(7)? as u64),
                projection_digest: Some(r.try_get(8)?),
                artifact: Some(r.try_get(9)?),
                artifact_digest: Some(r.try_get(10)?),
            };
            let (index, appended) = record::append_once(ledger, &self.signer, &rec).await?;
            self.client
                .execute(
                    &format!(
                        "UPDATE {CATALOG}.layers SET ledger_index = $1 WHERE dataset = $2 AND layer = $3 AND projection_digest = $4"
                    ),
                    &[&(index as i64), &rec.dataset, &rec.layer, &rec.projection_digest],
                )
                .await?;
            n += usize::from(appended);
        }
        Ok(n)
    }

    /// Projects everything published again from its artifacts, each
    /// version replacing its tables in one transaction (so a reader never
    /// meets an empty catalog), then drops every table no projection names.
    pub async fn rebuild(&mut self, ledger: &Ledger) -> Result<SyncReport, ProjectionError> {
        let mut report = self.pass(ledger, true).await?;
        let tx = self.client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL ROLE {}", schema::PROJECTOR))
            .await?;
        let strays = tx
            .query(
                &format!(
                    "SELECT t.schemaname, t.tablename FROM pg_tables t
                     WHERE t.schemaname = ANY($1) AND NOT EXISTS (
                         SELECT 1 FROM {CATALOG}.layers l
                         WHERE l.schema_name = t.schemaname AND l.table_name = t.tablename)"
                ),
                &[&vec![DATA, RESTRICTED]],
            )
            .await?;
        for t in strays {
            let (s, n) = (t.try_get::<_, String>(0)?, t.try_get::<_, String>(1)?);
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS {}",
                schema::qualified(&s, &n)?
            ))
            .await?;
            report
                .dropped
                .push((format!("{s}.{n}"), "no projection names it".into()));
        }
        tx.commit().await?;
        Ok(report)
    }
}
