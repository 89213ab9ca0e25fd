//! Gates F and G of a promotion (and its quarantine): the signed run
//! receipt, the release manifest, the version's files written create-only,
//! the manifest in the ledger, and the pointer's compare-and-swap.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kfm_core::dsse::IN_TOTO_PAYLOAD_TYPE;
use kfm_core::{DatasetSpec, Digest, Signer};
use kfm_store::{PointerVersion, StoreError};

use crate::catalog::Artifact;
use crate::gates::{Gate, GateResult};
use crate::qa::QaReport;
use crate::quarantine::{QUARANTINE_KIND, QuarantineReport};
use crate::records::{
    self, DigestSet, LedgerRef, MANIFEST_KIND, MANIFEST_PAYLOAD_TYPE, Manifest, POINTER_KIND,
    PolicyRef, RECEIPT_PREDICATE, ReleasePointer, ResourceDescriptor, RunPredicate, STATEMENT_TYPE,
    Statement, ToolVersion,
};

/// Ledger entries are at most this long (the ledger refuses longer ones).
const MAX_ENTRY: usize = 65_535;
use crate::error::PromoteError;
use crate::prepare::Processed;
use crate::run::{PolicyInfo, ts};
use crate::run::{PromoteOutcome, PromoteRequest};

/// What every step of one run shares.
pub(crate) struct RunContext<'r, 'a> {
    pub req: &'r PromoteRequest<'a>,
    pub ds: &'r str,
    pub run_id: &'r str,
    pub version: u64,
    pub version_id: &'r str,
    pub spec_digest: Digest,
    pub acquisition: ResourceDescriptor,
    pub started: DateTime<Utc>,
}

impl RunContext<'_, '_> {
    /// Signs a receipt for this run; the envelope bytes as stored.
    pub(crate) fn receipt(
        &self,
        signer: &Signer,
        outcome: &str,
        subject: Vec<ResourceDescriptor>,
        gates: &[GateResult],
        policy: Option<&PolicyInfo>,
    ) -> Result<Vec<u8>, String> {
        let statement = Statement {
            type_: STATEMENT_TYPE.into(),
            subject,
            predicate_type: RECEIPT_PREDICATE.into(),
            predicate: RunPredicate {
                run_id: self.run_id.to_owned(),
                operation: "promote".into(),
                outcome: outcome.into(),
                dataset: self.ds.to_owned(),
                version_id: Some(self.version_id.to_owned()),
                inputs: vec![
                    self.acquisition.clone(),
                    ResourceDescriptor {
                        name: self.req.spec_path.display().to_string(),
                        digest: DigestSet::from(&self.spec_digest),
                    },
                ],
                parameters: serde_json::json!({"version": self.version}),
                tools: vec![ToolVersion {
                    name: "kfm".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }],
                gates: trim_reasons(gates),
                policy: policy.map(|p| PolicyRef {
                    digest: p.digest.to_string(),
                    revision: p.revision.clone(),
                }),
                actor: self.req.actor.clone(),
                started_at: ts(self.started),
                finished_at: ts(Utc::now()),
            },
        };
        let payload = serde_json::to_vec(&statement).map_err(|e| e.to_string())?;
        // Size is the ledger's to judge: it refuses entries over its limit,
        // and gate F fails on that answer.
        signer
            .sign(IN_TOTO_PAYLOAD_TYPE, &payload)
            .to_bytes()
            .map_err(|e| e.to_string())
    }

    /// Ends the run in quarantine: report in quarantine/, a receipt in the
    /// ledger when one can be written.
    pub(crate) async fn quarantine(
        &self,
        gates: Vec<GateResult>,
        qa: Option<&QaReport>,
        left_behind: Vec<String>,
        artifacts: Vec<Artifact>,
    ) -> Result<PromoteOutcome, PromoteError> {
        let mut receipt = None;
        if let (Ok(signer), Ok(ledger)) = (self.req.signer.as_ref(), self.req.ledger.as_ref())
            && let Ok(bytes) = self.receipt(
                signer,
                "quarantined",
                Vec::new(),
                &gates,
                self.req.policy.as_ref().ok(),
            )
            && let Ok(a) = ledger.append(bytes.clone()).await
        {
            receipt = Some(LedgerRef {
                digest: Digest::of(&bytes).to_string(),
                ledger_index: a.index,
            });
        }
        let report = QuarantineReport {
            kind: QUARANTINE_KIND.into(),
            run_id: self.run_id.to_owned(),
            dataset: self.ds.to_owned(),
            operation: "promote".into(),
            acquisition: Some(self.acquisition.clone()),
            spec_digest: Some(self.spec_digest.to_string()),
            version_attempted: self.version,
            gates: gates.clone(),
            qa: qa.and_then(|q| serde_json::to_value(q).ok()),
            receipt: receipt.clone(),
            left_behind,
            started_at: Some(ts(self.started)),
            finished_at: ts(Utc::now()),
        };
        let key = report.write(self.req.store).await?;
        Ok(PromoteOutcome {
            run_id: self.run_id.to_owned(),
            dataset: self.ds.to_owned(),
            published: false,
            version: self.version,
            version_id: self.version_id.to_owned(),
            acquisition: format!("sha256:{}", self.acquisition.digest.sha256),
            gates,
            quarantine_report: Some(key),
            receipt,
            pointer: None,
            artifacts,
            aborted: Vec::new(),
        })
    }

    /// Gate G. On failure returns the gate result and what was left behind.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn release(
        &self,
        signer: &Signer,
        policy: &PolicyInfo,
        spec: &DatasetSpec,
        p: &Processed,
        artifacts: &[Artifact],
        catalog_docs: Vec<(String, &str, &str, Vec<u8>)>,
        catalog_artifacts: Vec<Artifact>,
        (receipt_bytes, receipt_ref): (Vec<u8>, LedgerRef),
        expected: Option<PointerVersion>,
    ) -> Result<(ReleasePointer, Vec<String>), (GateResult, Vec<String>)> {
        let store = self.req.store;
        let ds = self.ds;
        let v = self.version;
        let cannot = |m: String| (GateResult::cannot(Gate::G, m), Vec::new());
        let fail = |m: String, left: Vec<String>| (GateResult::fail(Gate::G, vec![m]), left);

        // The pointer must still be where this run found it, and verifiable.
        let now_ptr = store
            .published()
            .read(&records::pointer_key(ds))
            .await
            .map_err(|e| cannot(format!("the release pointer cannot be read: {e}")))?;
        if now_ptr.as_ref().map(|p| &p.version) != expected.as_ref() {
            return Err(fail(
                "the release pointer moved during this run (a concurrent promotion or rollback): this run loses and is quarantined, never merged".into(),
                Vec::new(),
            ));
        }
        if now_ptr.is_some() {
            // The version this run supersedes must check out end to end
            // (manifest, signature, ledger entries): a hand-edited pointer
            // is never built upon.
            let broken = |e: String| {
                cannot(format!(
                    "the current release pointer published/{ds}.json does not verify ({e}); restore it with `kfm rollback {ds} --to v<N>`"
                ))
            };
            let ledger = self
                .req
                .ledger
                .as_ref()
                .map_err(|e| cannot(format!("the ledger is not available: {e}")))?;
            let view = ledger
                .view()
                .await
                .map_err(|e| cannot(format!("the ledger cannot be read: {e}")))?;
            crate::release::verify_release(store, &view, ds, &signer.verifying_key())
                .await
                .map_err(broken)?;
        }

        let mut catalog = catalog_artifacts;
        let receipt_key = records::receipt_key(ds, v);
        catalog.push(Artifact {
            path: receipt_key.clone(),
            media_type: "application/vnd.dsse.envelope.v1+json".into(),
            size: receipt_bytes.len() as u64,
            digest: Digest::of(&receipt_bytes),
            role: "receipt".into(),
            policy_label: None,
        });
        let manifest = Manifest {
            kind: MANIFEST_KIND.into(),
            dataset: ds.to_owned(),
            version: v,
            version_id: self.version_id.to_owned(),
            run_id: self.run_id.to_owned(),
            policy_label: spec.sensitivity.policy_label.as_str().to_owned(),
            embargo_until: spec.sensitivity.embargo_until,
            license: spec.license.spdx.as_str().to_owned(),
            attribution: spec
                .license
                .attribution
                .as_ref()
                .map(|a| a.as_str().to_owned()),
            distribution: Some(
                match spec.license.distribution {
                    kfm_core::spec::Distribution::MetadataOnly => "metadata-only",
                    kfm_core::spec::Distribution::Mirror => "mirror",
                }
                .to_owned(),
            ),
            generalization: spec.sensitivity.generalization.as_ref().map(|g| {
                let mut v = serde_json::json!({"method": match g.method {
                    kfm_core::spec::GeneralizationMethod::Grid => "grid",
                    kfm_core::spec::GeneralizationMethod::H3 => "h3",
                }});
                if let Some(d) = g.degrees {
                    v["degrees"] = serde_json::json!(d);
                }
                if let Some(r) = g.resolution {
                    v["resolution"] = serde_json::json!(r);
                }
                v
            }),
            temporal_property: spec
                .temporal_extent
                .as_ref()
                .and_then(|t| t.property.clone()),
            artifacts: artifacts.to_vec(),
            catalog,
            policy: PolicyRef {
                digest: policy.digest.to_string(),
                revision: policy.revision.clone(),
            },
            receipt: receipt_ref,
            created_at: ts(Utc::now()),
        };
        let payload = serde_json::to_vec(&manifest)
            .map_err(|e| cannot(format!("the manifest cannot be serialised: {e}")))?;
        let manifest_bytes = signer
            .sign(MANIFEST_PAYLOAD_TYPE, &payload)
            .to_bytes()
            .map_err(|e| cannot(e.to_string()))?;
        if manifest_bytes.len() > MAX_ENTRY {
            return Err(cannot(format!(
                "the manifest is {} bytes, over the ledger's entry limit",
                manifest_bytes.len()
            )));
        }

        // Write the version: data first (the run's files, linked into
        // place), then catalog, receipt, manifest.
        enum Source {
            File(std::path::PathBuf),
            Bytes(Bytes),
        }
        let mut writes: Vec<(String, Source)> = Vec::new();
        if !artifacts.is_empty() {
            let a = &p.artifacts;
            let mut outputs = vec![&a.geojson, &a.fgb];
            if let Some((gj, gf)) = &a.generalized {
                outputs.push(gj);
                outputs.push(gf);
            }
            for (art, out) in artifacts.iter().zip(outputs) {
                let Some(path) = &out.path else {
                    return Err(cannot(format!("{} was not written to a file", art.path)));
                };
                writes.push((art.path.clone(), Source::File(path.clone())));
            }
        }
        for (k, _, _, b) in catalog_docs {
            writes.push((k, Source::Bytes(Bytes::from(b))));
        }
        writes.push((receipt_key, Source::Bytes(Bytes::from(receipt_bytes))));
        let mkey = records::manifest_key(ds, v);
        writes.push((
            mkey.clone(),
            Source::Bytes(Bytes::from(manifest_bytes.clone())),
        ));
        let mut left = Vec::new();
        for (i, (key, source)) in writes.into_iter().enumerate() {
            crate::fault::point(&format!("before-write-{i}"));
            let (zone, rel) = key.split_once('/').unwrap_or(("", &key));
            let r = match (zone, source) {
                ("processed", Source::File(f)) => store.processed().create_from_file(rel, &f).await,
                ("processed", Source::Bytes(b)) => store.processed().create(rel, b).await,
                (_, Source::File(f)) => store.catalog().create_from_file(rel, &f).await,
                (_, Source::Bytes(b)) => store.catalog().create(rel, b).await,
            };
            match r {
                Ok(()) => {
                    left.push(key);
                    crate::fault::point(&format!("after-write-{i}"));
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    return Err(fail(
                        format!(
                            "{key} already exists: a concurrent promotion claimed v{v}; this run loses and is quarantined"
                        ),
                        left,
                    ));
                }
                Err(e) => return Err(fail(format!("cannot write {key}: {e}"), left)),
            }
        }

        // The publication itself is a ledger entry: the signed manifest.
        let ledger = match self.req.ledger.as_ref() {
            Ok(l) => l,
            Err(e) => return Err(fail(format!("the ledger is not available: {e}"), left)),
        };
        let appended = match ledger.append(manifest_bytes.clone()).await {
            Ok(a) => a,
            Err(e) => {
                return Err(fail(format!("the ledger refused the manifest: {e}"), left));
            }
        };
        crate::fault::point("after-manifest");
        let manifest_digest = Digest::of(&manifest_bytes).to_string();
        let pointer = ReleasePointer {
            kind: POINTER_KIND.into(),
            dataset: ds.to_owned(),
            version: v,
            version_id: self.version_id.to_owned(),
            manifest: mkey,
            manifest_digest: manifest_digest.clone(),
            ledger_index: appended.index,
            ledger_entry_digest: manifest_digest.clone(),
            operation: "promote".into(),
            moved_at: ts(Utc::now()),
            run_id: Some(self.run_id.to_owned()),
        };
        let pbytes = match records::record_bytes(&pointer) {
            Ok(b) => b,
            Err(e) => return Err(fail(format!("the pointer cannot be encoded: {e}"), left)),
        };
        crate::fault::point("before-swap");
        let pbytes = Bytes::from(pbytes);
        let swapped = store
            .published()
            .compare_and_swap(&records::pointer_key(ds), expected.as_ref(), pbytes.clone())
            .await;
        if swapped.is_ok() {
            records::announce_release(ledger, &pointer, &pbytes).await;
            crate::fault::point("after-swap");
            // The history is also brought up to date by the next run, should
            // this fail or a crash come first.
            if let Err(e) = crate::runs::record_release(store, &pointer).await {
                tracing::warn!(error = %e, "the release history could not be written now; the next run adds it");
            }
        }
        match swapped {
            Ok(_) => Ok((
                pointer,
                vec![
                    format!("manifest {manifest_digest} signed, in the ledger at index {}", appended.index),
                    format!("published/{ds}.json now names {}", self.version_id),
                ],
            )),
            Err(StoreError::Conflict { .. }) => Err(fail(
                "the release pointer moved during this run (compare-and-swap lost): quarantined, never merged".into(),
                left,
            )),
            Err(e) => Err(fail(format!("cannot move the release pointer: {e}"), left)),
        }
    }
}

/// Receipts carry gate reasons, but a few lines each: the full lists live
/// in the quarantine report.
pub(crate) fn trim_reasons(gates: &[GateResult]) -> Vec<GateResult> {
    gates
        .iter()
        .map(|g| {
            let mut g = g.clone();
            if g.reasons.len() > 5 {
                let more = g.reasons.len() - 5;
                g.reasons.truncate(5);
                g.reasons
                    .push(format!("… and {more} more (see the quarantine report)"));
            }
            for r in &mut g.reasons {
                if r.len() > 300 {
                    let mut cut = 300;
                    while !r.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    r.truncate(cut);
                    r.push('…');
                }
            }
            g
        })
        .collect()
}
