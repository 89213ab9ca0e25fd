//! `promote`: one run of the truth path for one dataset — RAW → WORK →
//! gates A–G → PROCESSED + CATALOG → PUBLISHED, or QUARANTINE.
//!
//! Order matters and is the point of this module:
//! 1. Gates A–E have no effect outside `work/`: they decide on data held in
//!    memory. Any of them failing (or unable to decide) quarantines the run
//!    with nothing new under processed/, catalog/ or published/.
//! 2. Gate F signs the run receipt and waits for its durable ledger append.
//! 3. Gate G signs the release manifest, writes the version's artifacts
//!    (write-once), appends the manifest to the ledger, and only then moves
//!    the release pointer by compare-and-swap. A crash anywhere leaves the
//!    pointer on the old version or the new one, never in between.

use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use kfm_core::dsse::IN_TOTO_PAYLOAD_TYPE;
use kfm_core::{Acquisition, DatasetId, DatasetSpec, Digest, PolicyLabel, Signer};
use kfm_ledger::Ledger;
use kfm_store::{PointerVersion, Store, StoreError};
use serde::Serialize;

use crate::catalog::{self, Artifact, CatalogInput};
use crate::fgb::to_flatgeobuf;
use crate::gates::{Gate, GateResult};
use crate::generalize::{Plan, generalize};
use crate::ingest::{AcquisitionEntry, IngestError, acquisitions, load_spec};
use crate::normalize::{NormalizeError, Normalized, normalize, to_geojson};
use crate::qa::{self, QaReport};
use crate::quarantine::{QUARANTINE_KIND, QuarantineReport};
use crate::records::{
    self, DigestSet, LedgerRef, MANIFEST_KIND, MANIFEST_PAYLOAD_TYPE, Manifest, POINTER_KIND,
    PolicyRef, RECEIPT_PREDICATE, ReleasePointer, ResourceDescriptor, RunPredicate, STATEMENT_TYPE,
    Statement, ToolVersion,
};
use crate::release::next_version;

/// Ledger entries are at most this long (the ledger refuses longer ones).
const MAX_ENTRY: usize = 65_535;

/// The policy bundle in force, as gate B and G need it.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub digest: Digest,
    pub revision: String,
    /// `data.kfm.licenses`: license id → `{attribution: bool}`.
    pub licenses: serde_json::Value,
}

/// Everything a run needs from outside. Each dependency that may be
/// missing is a `Result`, so that its absence becomes a gate's
/// "cannot evaluate" with the reason, not an early exit.
pub struct PromoteRequest<'a> {
    pub store: &'a Store,
    pub spec_path: &'a Path,
    pub dataset: &'a DatasetId,
    /// A specific acquisition (digest); default the newest.
    pub acquisition: Option<Digest>,
    pub actor: String,
    pub policy: Result<PolicyInfo, String>,
    pub signer: Result<&'a Signer, String>,
    pub ledger: Result<&'a Ledger, String>,
    /// The run's clock: timestamps and embargo dates.
    pub now: DateTime<Utc>,
    /// How long a run's scratch under work/ is kept; older runs' scratch
    /// is removed when a run of the dataset starts.
    pub work_keep: chrono::Duration,
    /// Called as each gate starts (progress display; tests use it to act
    /// at a precise point of the run).
    pub on_gate: &'a (dyn Fn(Gate) + Sync),
}

/// Why a run could not start (exit 2): nothing was evaluated or written.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Spec(#[from] IngestError),
    #[error("{spec} declares dataset {declared}, not {requested}")]
    WrongDataset {
        spec: String,
        declared: String,
        requested: String,
    },
    #[error("dataset {0} has no acquisition in raw/: run `kfm ingest` first")]
    NoAcquisition(String),
    #[error("dataset {dataset} has no acquisition {digest} in raw/")]
    UnknownAcquisition { dataset: String, digest: String },
    #[error(
        "dataset {dataset} has no version v{version} (no catalog/{dataset}/v{version}/release.dsse.json)"
    )]
    UnknownVersion { dataset: String, version: u64 },
    #[error("{dataset} has no version v{version} that a release pointer ever named: {why}")]
    NeverReleased {
        dataset: String,
        version: u64,
        why: String,
    },
    #[error("before this run, interrupted runs of {dataset} must be recorded, and were not: {why}")]
    Settle { dataset: String, why: String },
    #[error(transparent)]
    Quarantine(#[from] crate::quarantine::ReportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of a run that started.
#[derive(Debug, Clone, Serialize)]
pub struct PromoteOutcome {
    pub run_id: String,
    pub dataset: String,
    pub published: bool,
    /// The version this run produced (published) or attempted.
    pub version: u64,
    pub version_id: String,
    pub acquisition: String,
    pub gates: Vec<GateResult>,
    /// `quarantine/<ds>/<run_id>/report.json` when quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_report: Option<String>,
    /// Where this run's receipt sits in the ledger, if it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<LedgerRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<ReleasePointer>,
    pub artifacts: Vec<Artifact>,
    /// Earlier runs of this dataset found interrupted, recorded as aborted
    /// (in the ledger) before this one began.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<crate::runs::AbortedRecord>,
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A sortable, unique run id: UTC time to the millisecond (runs of one
/// dataset are ordered by it, and several fit in a second), then 8 random
/// hex digits.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%S%3fZ"), &r[..8])
}

/// Processed bytes of one run, as a pure function of (raw bytes, spec).
#[derive(Clone)]
struct Processed {
    /// Feature count, extent and QA report: the features themselves are
    /// dropped once the artifacts and the report exist (memory).
    count: usize,
    bbox: Option<[f64; 4]>,
    qa: QaReport,
    // `Bytes`: written to work/ and processed/ without copying.
    geojson: Bytes,
    fgb: Bytes,
    generalized: Option<(Bytes, Bytes)>,
}

impl Processed {
    fn digests(&self) -> Vec<Digest> {
        let mut d = vec![Digest::of(&self.geojson), Digest::of(&self.fgb)];
        if let Some((g, f)) = &self.generalized {
            d.push(Digest::of(g));
            d.push(Digest::of(f));
        }
        d
    }
}

fn process(spec: &DatasetSpec, raw: &[u8]) -> Result<Processed, Vec<String>> {
    let normalized: Normalized =
        normalize(spec, raw).map_err(|NormalizeError { problems, .. }| problems)?;
    let geojson = Bytes::from(to_geojson(&normalized.features));
    let name = spec.id.as_str();
    let fgb =
        Bytes::from(to_flatgeobuf(name, &normalized.features).map_err(|e| vec![e.to_string()])?);
    let plan = plan_of(spec).and_then(Result::ok);
    let generalized = match plan {
        Some(plan) if spec.sensitivity.policy_label == PolicyLabel::RestrictedSensitiveLocation => {
            let g = generalize(&normalized.features, &plan);
            let gj = Bytes::from(to_geojson(&g));
            let gf = Bytes::from(to_flatgeobuf(name, &g).map_err(|e| vec![e.to_string()])?);
            Some((gj, gf))
        }
        _ => None,
    };
    Ok(Processed {
        count: normalized.features.len(),
        bbox: normalized.bbox,
        qa: qa::evaluate(&spec.qa, &normalized.features),
        geojson,
        fgb,
        generalized,
    })
}

fn plan_of(spec: &DatasetSpec) -> Option<Result<Plan, String>> {
    spec.sensitivity
        .generalization
        .as_ref()
        .map(Plan::from_spec)
}

/// Runs the truth path for one dataset.
pub async fn promote(req: PromoteRequest<'_>) -> Result<PromoteOutcome, PromoteError> {
    let started = req.now;
    let run_id = new_run_id(started);
    let (spec, spec_digest) = load_spec(req.spec_path)?;
    if &spec.id != req.dataset {
        return Err(PromoteError::WrongDataset {
            spec: req.spec_path.display().to_string(),
            declared: spec.id.to_string(),
            requested: req.dataset.to_string(),
        });
    }
    let ds = req.dataset.as_str();
    let acq = pick_acquisition(req.store, req.dataset, req.acquisition.as_ref()).await?;
    // Runs of one dataset take turns: what follows reads the versions and
    // the pointer, and may call a claim without an outcome interrupted.
    let _turn = req.store.lock_runs(ds).await?;
    let aborted = crate::runs::before_run(crate::runs::RunStart {
        store: req.store,
        ledger: req.ledger.as_ref().ok().copied(),
        signer: req.signer.as_ref().ok().copied(),
        dataset: ds,
        run_id: &run_id,
        actor: &req.actor,
        now: req.now,
        work_keep: req.work_keep,
    })
    .await?;
    let published = req.store.published();
    let pointer_before = published.read(&records::pointer_key(ds)).await?;
    let version = next_version(req.store, req.dataset, pointer_before.as_ref()).await?;
    let version_id = format!("{ds}@v{version}");
    let work = req.store.work();

    // ---- Gate A: identity & versioning --------------------------------
    (req.on_gate)(Gate::A);
    let raw_key = acq
        .object
        .strip_prefix("raw/")
        .unwrap_or(&acq.object)
        .to_owned();
    let mut processed: Option<Processed> = None;
    let gate_a = match req.store.raw().get(&raw_key).await {
        Err(e) => GateResult::cannot(
            Gate::A,
            format!("the acquisition {} cannot be read: {e}", acq.object),
        ),
        Ok(raw) => {
            let got = Digest::of(&raw);
            if got != acq.digest || raw.len() as u64 != acq.size {
                GateResult::fail(
                    Gate::A,
                    vec![format!(
                        "{} no longer holds the acquired bytes: recorded {} ({} bytes), found {got} ({} bytes)",
                        acq.object,
                        acq.digest,
                        acq.size,
                        raw.len()
                    )],
                )
            } else {
                // Process twice, concurrently, and compare: determinism is
                // checked on every run, not assumed.
                // One after the other, so that only one run's features are
                // in memory at a time (each run drops them when done).
                let first = process(&spec, &raw);
                // (No second run when the first cannot normalise the input.)
                let second = first
                    .as_ref()
                    .ok()
                    .map(|_| process(&spec, &raw).map(|p| p.digests()));
                match (first, second) {
                    (Err(problems), _) => GateResult::fail(
                        Gate::A,
                        std::iter::once(format!(
                            "{} cannot be normalised into RFC 7946 GeoJSON:",
                            acq.object
                        ))
                        .chain(problems)
                        .collect(),
                    ),
                    (Ok(p), Some(Ok(d2))) if p.digests() == d2 => {
                        let notes = vec![
                            format!("dataset id {ds}, version {version_id}, run {run_id}"),
                            format!("raw digest re-verified: {}", acq.digest),
                            format!(
                                "processing deterministic: two runs gave identical bytes ({} features)",
                                p.count
                            ),
                        ];
                        processed = Some(p);
                        GateResult::pass(Gate::A, notes)
                    }
                    (Ok(_), Some(Ok(_))) => GateResult::fail(
                        Gate::A,
                        vec!["processing is not deterministic: two runs over the same bytes gave different artifacts".into()],
                    ),
                    (Ok(_), Some(Err(_)) | None) => GateResult::cannot(
                        Gate::A,
                        "the determinism check's second run did not complete",
                    ),
                }
            }
        }
    };
    if let Some(p) = &processed {
        // WORK holds the normalised intermediate of this run.
        let _ = work
            .put(
                &format!("{ds}/{run_id}/features.geojson"),
                p.geojson.clone(),
            )
            .await;
    }

    // ---- Gate B: licensing & rights -----------------------------------
    (req.on_gate)(Gate::B);
    let gate_b = gate_b(&spec, req.policy.as_ref());

    // ---- Gate C: sensitivity ------------------------------------------
    (req.on_gate)(Gate::C);
    let gate_c = gate_c(&spec, req.now, processed.as_ref());

    // Artifacts this version would publish.
    let metadata_only = spec.license.distribution == kfm_core::spec::Distribution::MetadataOnly;
    let artifacts: Vec<Artifact> = match &processed {
        Some(p) if !metadata_only => artifact_list(&spec, version, p),
        _ => Vec::new(),
    };

    // ---- Gate D: catalog triplet --------------------------------------
    (req.on_gate)(Gate::D);
    let finished_guess = ts(req.now);
    let generalization = match (&processed, plan_of(&spec)) {
        (Some(p), Some(Ok(plan))) if p.generalized.is_some() => Some(plan.describe()),
        _ => None,
    };
    let mut triplet = None;
    let gate_d = match &processed {
        None => GateResult::cannot(Gate::D, "no normalised data to describe (gate A)"),
        Some(p) => {
            let input = CatalogInput {
                spec: &spec,
                version,
                run_id: &run_id,
                actor: &req.actor,
                tool: &format!("kfm-{}", env!("CARGO_PKG_VERSION")),
                acquisition: (&acq.object, acq.digest, acq.size),
                artifacts: &artifacts,
                bbox: p.bbox,
                started_at: &ts(started),
                finished_at: &finished_guess,
                generalization: generalization.as_deref(),
            };
            match catalog::build(&input) {
                Err(e) => GateResult::cannot(Gate::D, e),
                Ok(t) => {
                    let problems = catalog::check(ds, version, &t, &artifacts);
                    let r = if problems.is_empty() {
                        GateResult::pass(
                            Gate::D,
                            vec![format!(
                                "DCAT, STAC (valid against STAC 1.1.0 schemas) and PROV agree on {} artifacts",
                                artifacts.len()
                            )],
                        )
                    } else {
                        GateResult::fail(Gate::D, problems)
                    };
                    triplet = Some(t);
                    r
                }
            }
        }
    };

    // ---- Gate E: QA -----------------------------------------------------
    (req.on_gate)(Gate::E);
    let qa_report: Option<QaReport> = processed.as_ref().map(|p| p.qa.clone());
    let gate_e = match &qa_report {
        None => GateResult::cannot(Gate::E, "no normalised data to measure (gate A)"),
        Some(r) if !r.cannot_evaluate.is_empty() => {
            GateResult::cannot_all(Gate::E, r.cannot_evaluate.clone())
        }
        Some(r) if r.passed() => {
            GateResult::pass(Gate::E, vec![format!("{} thresholds met", r.checks.len())])
        }
        Some(r) => GateResult::fail(
            Gate::E,
            r.checks
                .iter()
                .filter(|c| !c.pass)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect(),
        ),
    };
    let qa_json = qa_report
        .as_ref()
        .and_then(|r| serde_json::to_vec_pretty(r).ok())
        .map(|mut b| {
            b.push(b'\n');
            b
        });
    if let Some(q) = &qa_json {
        let _ = work
            .put(&format!("{ds}/{run_id}/qa.json"), Bytes::from(q.clone()))
            .await;
    }

    let mut gates = vec![gate_a, gate_b, gate_c, gate_d, gate_e];
    let acquisition_ref = ResourceDescriptor {
        name: acq.object.clone(),
        digest: DigestSet::from(&acq.digest),
    };
    let ctx = RunContext {
        req: &req,
        ds,
        run_id: &run_id,
        version,
        version_id: &version_id,
        spec_digest,
        acquisition: acquisition_ref.clone(),
        started,
    };

    if gates.iter().any(|g| !g.passed()) {
        gates.push(GateResult::not_run(Gate::F));
        gates.push(GateResult::not_run(Gate::G));
        return ctx
            .quarantine(gates, qa_report.as_ref(), Vec::new(), artifacts)
            .await;
    }
    let (Some(p), Some(t), Some(qa_json), Ok(signer), Ok(policy)) = (
        processed,
        triplet,
        qa_json,
        req.signer.as_ref(),
        req.policy.as_ref(),
    ) else {
        // Unreachable when A–E passed, except for a missing signer/policy,
        // which F and G report below.
        return finish_without_keys(ctx, gates, qa_report, artifacts).await;
    };

    // Catalog documents (receipt and manifest come after).
    let qa_key = format!("catalog/{ds}/v{version}/qa.json");
    let catalog_docs: Vec<(String, &str, &str, Vec<u8>)> = vec![
        (
            catalog::dcat_key(ds, version),
            "application/ld+json",
            "dcat",
            t.dcat,
        ),
        (
            catalog::stac_key(ds, version),
            "application/json",
            "stac",
            t.stac,
        ),
        (
            catalog::prov_key(ds, version),
            "application/json",
            "prov",
            t.prov,
        ),
        (qa_key, "application/json", "qa", qa_json),
    ];
    let catalog_artifacts: Vec<Artifact> = catalog_docs
        .iter()
        .map(|(k, mt, role, b)| Artifact {
            path: k.clone(),
            media_type: (*mt).to_owned(),
            size: b.len() as u64,
            digest: Digest::of(b),
            role: (*role).to_owned(),
            policy_label: None,
        })
        .collect();

    // ---- Gate F: run receipt & audit record --------------------------
    (req.on_gate)(Gate::F);
    // Invariant: a version number, once claimed by a run that reaches F,
    // is never numbered again. The claim is made before the receipt, so
    // the version exists (catalog/<ds>/v<N>/) whatever happens next.
    let claim = crate::runs::RunClaim {
        kind: crate::runs::CLAIM_KIND.into(),
        run_id: run_id.clone(),
        dataset: ds.to_owned(),
        operation: "promote".into(),
        version,
        actor: req.actor.clone(),
        started_at: ts(started),
        acquisition: Some(acq.digest.to_string()),
    };
    if let Err(e) = crate::runs::claim(req.store, &claim).await {
        gates.push(match e {
            crate::runs::ClaimError::Taken { .. } => GateResult::fail(
                Gate::F,
                vec![format!(
                    "{e}: this run loses and is quarantined, never merged"
                )],
            ),
            crate::runs::ClaimError::Store(e) => {
                GateResult::cannot(Gate::F, format!("the version claim cannot be written: {e}"))
            }
        });
        gates.push(GateResult::not_run(Gate::G));
        let mut out = ctx
            .quarantine(gates, qa_report.as_ref(), Vec::new(), artifacts)
            .await?;
        out.aborted = aborted;
        return Ok(out);
    }
    crate::fault::point("after-claim");
    let subjects: Vec<ResourceDescriptor> = artifacts
        .iter()
        .chain(&catalog_artifacts)
        .map(|a| ResourceDescriptor {
            name: a.path.clone(),
            digest: DigestSet::from(&a.digest),
        })
        .collect();
    let receipt_env = ctx.receipt(signer, "gates-passed", subjects, &gates, Some(policy));
    let receipt = match (receipt_env, req.ledger.as_ref()) {
        (Err(e), _) => Err(GateResult::cannot(Gate::F, e)),
        (_, Err(e)) => Err(GateResult::cannot(
            Gate::F,
            format!("the ledger is not available: {e}"),
        )),
        (Ok(env), Ok(ledger)) => match ledger.append(env.clone()).await {
            Ok(a) => Ok((env, a.index)),
            Err(e) => Err(GateResult::fail(
                Gate::F,
                vec![format!("the ledger refused the receipt: {e}")],
            )),
        },
    };
    let (receipt_bytes, receipt_index) = match receipt {
        Err(r) => {
            gates.push(r);
            gates.push(GateResult::not_run(Gate::G));
            return ctx
                .quarantine(gates, qa_report.as_ref(), Vec::new(), artifacts)
                .await;
        }
        Ok(x) => x,
    };
    crate::fault::point("after-receipt");
    let receipt_ref = LedgerRef {
        digest: Digest::of(&receipt_bytes).to_string(),
        ledger_index: receipt_index,
    };
    gates.push(GateResult::pass(
        Gate::F,
        vec![format!(
            "receipt signed and durable in the ledger at index {receipt_index}"
        )],
    ));

    // ---- Gate G: release manifest & pointer ---------------------------
    (req.on_gate)(Gate::G);
    let release = ctx
        .release(
            signer,
            policy,
            &spec,
            &p,
            &artifacts,
            catalog_docs,
            catalog_artifacts,
            (receipt_bytes, receipt_ref.clone()),
            pointer_before.map(|p| p.version),
        )
        .await;
    match release {
        Err((result, left_behind)) => {
            gates.push(result);
            let mut out = ctx
                .quarantine(gates, qa_report.as_ref(), left_behind, artifacts)
                .await?;
            out.receipt.get_or_insert(receipt_ref);
            out.aborted = aborted;
            Ok(out)
        }
        Ok((pointer, note)) => {
            gates.push(GateResult::pass(Gate::G, note));
            Ok(PromoteOutcome {
                run_id: run_id.clone(),
                dataset: ds.to_owned(),
                published: true,
                version,
                version_id: version_id.clone(),
                acquisition: acq.digest.to_string(),
                gates,
                quarantine_report: None,
                receipt: Some(receipt_ref),
                pointer: Some(pointer),
                artifacts,
                aborted,
            })
        }
    }
}

async fn finish_without_keys(
    ctx: RunContext<'_, '_>,
    mut gates: Vec<GateResult>,
    qa_report: Option<QaReport>,
    artifacts: Vec<Artifact>,
) -> Result<PromoteOutcome, PromoteError> {
    let f = match (&ctx.req.signer, &ctx.req.policy) {
        (Err(e), _) => GateResult::cannot(Gate::F, format!("no signing key: {e}")),
        (_, Err(e)) => GateResult::cannot(Gate::F, format!("no policy bundle: {e}")),
        _ => GateResult::cannot(Gate::F, "the run's data is incomplete"),
    };
    gates.push(f);
    gates.push(GateResult::not_run(Gate::G));
    ctx.quarantine(gates, qa_report.as_ref(), Vec::new(), artifacts)
        .await
}

fn artifact_list(spec: &DatasetSpec, v: u64, p: &Processed) -> Vec<Artifact> {
    let ds = spec.id.as_str();
    let label = spec.sensitivity.policy_label.as_str().to_owned();
    let mk = |name: &str, mt: &str, role: &str, bytes: &[u8], label: &str| Artifact {
        path: format!("processed/{ds}/v{v}/{name}"),
        media_type: mt.to_owned(),
        size: bytes.len() as u64,
        digest: Digest::of(bytes),
        role: role.to_owned(),
        policy_label: Some(label.to_owned()),
    };
    let mut out = vec![
        mk(
            "features.geojson",
            "application/geo+json",
            "data",
            &p.geojson,
            &label,
        ),
        mk(
            "features.fgb",
            "application/vnd.flatgeobuf",
            "index",
            &p.fgb,
            &label,
        ),
    ];
    if let Some((gj, gf)) = &p.generalized {
        let g = PolicyLabel::PublicGeneralized.as_str();
        out.push(mk(
            "generalized.geojson",
            "application/geo+json",
            "generalized",
            gj,
            g,
        ));
        out.push(mk(
            "generalized.fgb",
            "application/vnd.flatgeobuf",
            "generalized-index",
            gf,
            g,
        ));
    }
    out
}

fn gate_b(spec: &DatasetSpec, policy: Result<&PolicyInfo, &String>) -> GateResult {
    let lic = &spec.license;
    let id = lic.spdx.as_str();
    let mut problems = Vec::new();
    if lic.spdx.is_unknown() {
        problems.push(format!(
            "license.spdx is {id}: the rights are unknown, so nothing may be published; find the license and name its SPDX id"
        ));
    }
    if lic.rights_holder.as_str().trim().is_empty() {
        problems.push("license.rights_holder is empty: name who holds the rights".into());
    }
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            return GateResult::cannot(
                Gate::B,
                format!(
                    "the policy's license table is unavailable ({e}), so license {id} cannot be judged"
                ),
            );
        }
    };
    let entry = policy.licenses.get(id);
    if !lic.spdx.is_unknown() && entry.is_none() {
        problems.push(format!(
            "license {id} is not known to the policy bundle (data.kfm.licenses, revision {}): add it there after legal review, or correct license.spdx",
            policy.revision
        ));
    }
    let needs_attribution = lic.spdx.requires_attribution()
        || entry.is_some_and(|e| e.get("attribution") == Some(&serde_json::Value::Bool(true)));
    let has_attribution = lic
        .attribution
        .as_ref()
        .is_some_and(|a| !a.as_str().trim().is_empty());
    if needs_attribution && !has_attribution {
        problems.push(format!(
            "license {id} requires attribution: add license.attribution with the text users must show"
        ));
    }
    if problems.is_empty() {
        let mut notes = vec![format!(
            "{id}, rights holder {}",
            lic.rights_holder.as_str()
        )];
        if needs_attribution {
            notes.push("attribution text present".into());
        }
        if spec.license.distribution == kfm_core::spec::Distribution::MetadataOnly {
            notes.push(
                "distribution metadata-only: the catalog triplet is published, no data artifacts"
                    .into(),
            );
        }
        GateResult::pass(Gate::B, notes)
    } else {
        GateResult::fail(Gate::B, problems)
    }
}

fn gate_c(spec: &DatasetSpec, now: DateTime<Utc>, processed: Option<&Processed>) -> GateResult {
    let s = &spec.sensitivity;
    let label = s.policy_label;
    match label {
        PolicyLabel::Quarantine => GateResult::fail(
            Gate::C,
            vec!["policy_label is quarantine: a quarantined dataset is never released; relabel it after review".into()],
        ),
        PolicyLabel::Embargoed => match s.embargo_until {
            None => GateResult::cannot(
                Gate::C,
                "policy_label is embargoed but sensitivity.embargo_until is missing: the release date cannot be judged",
            ),
            Some(d) if now.date_naive() < d => GateResult::fail(
                Gate::C,
                vec![format!(
                    "embargoed until {d}: not released before its date (today is {})",
                    now.date_naive()
                )],
            ),
            Some(d) => GateResult::pass(Gate::C, vec![format!("embargo ended {d}")]),
        },
        PolicyLabel::RestrictedSensitiveLocation => match plan_of(spec) {
            None => GateResult::fail(
                Gate::C,
                vec!["policy_label restricted_sensitive_location requires sensitivity.generalization (grid degrees or h3 resolution)".into()],
            ),
            Some(Err(e)) => GateResult::cannot(Gate::C, e),
            Some(Ok(plan)) => match processed {
                None => GateResult::cannot(
                    Gate::C,
                    "no normalised data to generalise (gate A)",
                ),
                Some(p) if p.generalized.is_some() => GateResult::pass(
                    Gate::C,
                    vec![
                        format!("{}: public_generalized derivative produced", label.as_str()),
                        plan.describe(),
                    ],
                ),
                Some(_) => GateResult::cannot(Gate::C, "the generalised derivative was not produced"),
            },
        },
        other => GateResult::pass(Gate::C, vec![format!("policy_label {}", other.as_str())]),
    }
}

async fn pick_acquisition(
    store: &Store,
    ds: &DatasetId,
    want: Option<&Digest>,
) -> Result<Acquisition, PromoteError> {
    let recorded: Vec<Acquisition> = acquisitions(store, ds)
        .await?
        .into_iter()
        .filter_map(|e| match e {
            AcquisitionEntry::Recorded(a) => Some(*a),
            AcquisitionEntry::Incomplete { .. } => None,
        })
        .collect();
    match want {
        Some(d) => recorded
            .into_iter()
            .find(|a| &a.digest == d)
            .ok_or_else(|| PromoteError::UnknownAcquisition {
                dataset: ds.to_string(),
                digest: d.to_string(),
            }),
        None => recorded
            .into_iter()
            .last()
            .ok_or_else(|| PromoteError::NoAcquisition(ds.to_string())),
    }
}

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
    fn receipt(
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
        Ok(signer.sign(IN_TOTO_PAYLOAD_TYPE, &payload).to_bytes())
    }

    /// Ends the run in quarantine: report in quarantine/, a receipt in the
    /// ledger when one can be written.
    async fn quarantine(
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
    async fn release(
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
        let manifest_bytes = signer.sign(MANIFEST_PAYLOAD_TYPE, &payload).to_bytes();
        if manifest_bytes.len() > MAX_ENTRY {
            return Err(cannot(format!(
                "the manifest is {} bytes, over the ledger's entry limit",
                manifest_bytes.len()
            )));
        }

        // Write the version: data first, then catalog, receipt, manifest.
        let mut writes: Vec<(String, Bytes)> = Vec::new();
        if !artifacts.is_empty() {
            writes.push((artifacts[0].path.clone(), p.geojson.clone()));
            writes.push((artifacts[1].path.clone(), p.fgb.clone()));
            if let Some((gj, gf)) = &p.generalized {
                writes.push((artifacts[2].path.clone(), gj.clone()));
                writes.push((artifacts[3].path.clone(), gf.clone()));
            }
        }
        for (k, _, _, b) in catalog_docs {
            writes.push((k, Bytes::from(b)));
        }
        writes.push((receipt_key, Bytes::from(receipt_bytes)));
        let mkey = records::manifest_key(ds, v);
        writes.push((mkey.clone(), Bytes::from(manifest_bytes.clone())));
        let mut left = Vec::new();
        for (i, (key, bytes)) in writes.into_iter().enumerate() {
            crate::fault::point(&format!("before-write-{i}"));
            let (zone, rel) = key.split_once('/').unwrap_or(("", &key));
            let r = match zone {
                "processed" => store.processed().create(rel, bytes).await,
                _ => store.catalog().create(rel, bytes).await,
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
        let mut pbytes = serde_json::to_vec_pretty(&pointer).unwrap_or_default();
        pbytes.push(b'\n');
        crate::fault::point("before-swap");
        let swapped = store
            .published()
            .compare_and_swap(
                &records::pointer_key(ds),
                expected.as_ref(),
                Bytes::from(pbytes),
            )
            .await;
        if swapped.is_ok() {
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
fn trim_reasons(gates: &[GateResult]) -> Vec<GateResult> {
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
