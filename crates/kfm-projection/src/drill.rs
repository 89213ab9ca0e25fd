//! The disaster-recovery drill's projection half: rebuild every projection
//! into an empty database from the canonical store alone, prove it equal,
//! and resolve evidence for a sample of features of every layer back to
//! the canonical artifact and the ledger; then the signed receipt.
//!
//! The caller (the CLI) verifies the ledger offline and the pinned policy
//! first and passes what it found, so that one receipt says all of it.

use std::collections::HashMap;

use kfm_core::Envelope;
use kfm_core::canonical::to_canonical_json;
use kfm_core::dsse::Signer;
use kfm_ledger::Ledger;
use serde::{Deserialize, Serialize};

use crate::ProjectionError;
use crate::rows::{Digester, Row, canonical_props};
use crate::schema::{self, CATALOG};
use crate::sync::Projector;

/// DSSE payload type of a drill receipt.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.kfm.dr-drill+json";
pub const RECEIPT_KIND: &str = "kfm.dr-drill/v1";

/// One sampled feature, traced from its row back to the canonical store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evidence {
    pub dataset: String,
    pub layer: String,
    pub fid: String,
    /// Ledger entry of the projection record of its table.
    pub record_index: Option<u64>,
    /// Ledger entry that moved the release pointer to its version.
    pub pointer_index: u64,
    pub resolved: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A rebuilt layer, as the receipt lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillLayer {
    pub dataset: String,
    pub layer: String,
    pub table: String,
    pub rows: u64,
    pub projection_digest: String,
    pub equal: bool,
}

/// The ledger as the drill found it (verified offline by the caller).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LedgerState {
    pub verified: bool,
    /// RPO: everything up to this entry count is recoverable.
    pub size: u64,
    pub root: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The pinned policy as the drill found it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyState {
    pub digest: Option<String>,
    pub pinned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The drill's signed result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillReceipt {
    pub kind: String,
    /// `passed` or `failed`.
    pub outcome: String,
    pub environment: String,
    pub started_at: String,
    pub finished_at: String,
    /// Recovery time: from the start of the drill to a verified platform.
    pub rto_seconds: f64,
    /// Recovery point: the last sequenced ledger entry restored.
    pub rpo: LedgerState,
    pub policy: PolicyState,
    /// Where the projections were rebuilt (host and database, never a password).
    pub database: String,
    pub pointers_verified: u64,
    pub layers: Vec<DrillLayer>,
    pub evidence: Vec<Evidence>,
    pub problems: Vec<String>,
    pub tool: String,
}

impl Projector {
    /// Whether this database holds no projection yet (a drill refuses to
    /// rebuild over a live one).
    pub async fn is_empty(&self) -> Result<bool, ProjectionError> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {CATALOG}.projections)::int8
                          + (SELECT count(*) FROM pg_tables WHERE schemaname = ANY($1))::int8"
                ),
                &[&vec![schema::DATA, schema::RESTRICTED]],
            )
            .await?;
        Ok(row.try_get::<_, i64>(0)? == 0)
    }

    /// Traces `per_layer` features of every projected layer (spread over
    /// the table) from the database row to the artifact row at the same
    /// position, the table's ledger record, and inclusion proofs of that
    /// record and of the pointer's entry in the current ledger.
    pub async fn sample_evidence(
        &self,
        ledger: &Ledger,
        verifier_key: &str,
        origin: &str,
        per_layer: u64,
    ) -> Result<Vec<Evidence>, ProjectionError> {
        let layers = self
            .client
            .query(
                &format!(
                    "SELECT l.dataset, l.layer, l.schema_name, l.table_name, l.rows, l.artifact, l.artifact_digest, l.ledger_index, p.pointer_ledger_index
                     FROM {CATALOG}.layers l JOIN {CATALOG}.projections p USING (dataset) ORDER BY 1, 2"
                ),
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for l in layers {
            let (ds, layer, s, t): (String, String, String, String) =
                (l.try_get(0)?, l.try_get(1)?, l.try_get(2)?, l.try_get(3)?);
            let rows = l.try_get::<_, i64>(4)?.max(0) as u64;
            let (artifact, artifact_digest): (String, String) = (l.try_get(5)?, l.try_get(6)?);
            let record_index = l.try_get::<_, Option<i64>>(7)?.map(|i| i as u64);
            let pointer_index = l.try_get::<_, i64>(8)? as u64;
            let n = per_layer.min(rows);
            let ords: Vec<i64> = (0..n)
                .map(|k| ((k * rows.saturating_sub(1)) / n.saturating_sub(1).max(1)) as i64)
                .collect();
            let digest: kfm_core::Digest = artifact_digest
                .parse()
                .map_err(|e| ProjectionError::Catalog(format!("{ds}: artifact digest: {e}")))?;
            /// The sampled positions, and what the artifact holds there.
            type Sample = (Vec<i64>, HashMap<i64, (String, String)>);
            let (_, (_, from_artifact)) = self
                .scan_artifact(
                    &artifact,
                    &digest,
                    (ords.clone(), HashMap::new()),
                    |(wanted, found): &mut Sample, r: &Row| {
                        if wanted.contains(&r.ord) {
                            let mut d = Digester::new();
                            d.push_row(r);
                            found.insert(r.ord, (r.fid.clone(), d.finish().0));
                        }
                    },
                )
                .await?;
            let q = schema::qualified(&s, &t)?;
            let db_rows = self
                .client
                .query(
                    &format!(
                        "SELECT ord, fid, fid_numeric, ST_AsEWKB(geom, 'NDR'), props::text FROM {q} WHERE ord = ANY($1) ORDER BY ord"
                    ),
                    &[&ords],
                )
                .await?;
            let proofs = prove_all(ledger, verifier_key, origin, record_index, pointer_index).await;
            for r in db_rows {
                let ord: i64 = r.try_get(0)?;
                let fid: String = r.try_get(1)?;
                let props = match r.try_get::<_, Option<String>>(4)? {
                    Some(t) => Some(canonical_props(&t).map_err(ProjectionError::Catalog)?),
                    None => None,
                };
                let mut d = Digester::new();
                d.push(
                    ord,
                    &fid,
                    r.try_get(2)?,
                    r.try_get::<_, Option<Vec<u8>>>(3)?.as_deref(),
                    props.as_deref(),
                );
                let in_db = d.finish().0;
                let problem = match (from_artifact.get(&ord), &proofs) {
                    (None, _) => Some(format!("the artifact has no feature at position {ord}")),
                    (Some((_, a)), _) if *a != in_db => {
                        Some("the row differs from the artifact's feature".into())
                    }
                    (_, Err(e)) => Some(e.clone()),
                    _ => None,
                };
                out.push(Evidence {
                    dataset: ds.clone(),
                    layer: layer.clone(),
                    fid,
                    record_index,
                    pointer_index,
                    resolved: problem.is_none(),
                    problem,
                });
            }
        }
        Ok(out)
    }
}

/// Inclusion proofs of the projection record and the pointer's entry,
/// checked against the ledger's signed checkpoint.
async fn prove_all(
    ledger: &Ledger,
    verifier_key: &str,
    origin: &str,
    record: Option<u64>,
    pointer: u64,
) -> Result<(), String> {
    let Some(record) = record else {
        return Err("its table has no ledger record".into());
    };
    for index in [record, pointer] {
        let entry = ledger
            .entry(index)
            .await
            .map_err(|e| format!("ledger entry {index}: {e}"))?;
        let p = ledger
            .prove(index)
            .await
            .map_err(|e| format!("no inclusion proof for entry {index}: {e}"))?;
        let cp = kfm_ledger::verify_checkpoint(&p.checkpoint, verifier_key, Some(origin))
            .map_err(|e| format!("the checkpoint of entry {index}'s proof: {e}"))?;
        kfm_ledger::verify_inclusion(
            index,
            p.size,
            &kfm_ledger::leaf_hash(&entry),
            &p.proof,
            &cp.root,
        )
        .map_err(|e| format!("entry {index} is not in the ledger: {e}"))?;
    }
    Ok(())
}

/// Signs the receipt and appends it; returns its ledger index.
pub async fn record_receipt(
    ledger: &Ledger,
    signer: &Signer,
    receipt: &DrillReceipt,
) -> Result<u64, ProjectionError> {
    let payload = to_canonical_json(receipt).map_err(|e| ProjectionError::Record(e.to_string()))?;
    let env: Envelope = signer.sign(RECEIPT_PAYLOAD_TYPE, &payload);
    let bytes = env
        .to_bytes()
        .map_err(|e| ProjectionError::Record(e.to_string()))?;
    let a = ledger
        .append(bytes)
        .await
        .map_err(|e| ProjectionError::Ledger(e.to_string()))?;
    Ok(a.index)
}
