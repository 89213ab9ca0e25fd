//! `promote`: one run of the truth path for one dataset — RAW → WORK →
//! gates A–G → PROCESSED + CATALOG → PUBLISHED, or QUARANTINE.
//!
//! Order matters and is the point of this module:
//! 1. Gates A–E have no effect outside `work/` (`prepare`): the source is
//!    streamed through normalisation into the run's scratch files there,
//!    and they decide on what it measured. Any of them failing (or unable
//!    to decide) quarantines the run with nothing new under processed/,
//!    catalog/ or published/ (but the run's claim, below).
//! 2. Gate F claims the version (`catalog/<ds>/v<N>/claim.json`, so the
//!    number is never reused), signs the run receipt and waits for its
//!    durable ledger append (`publish`).
//! 3. Gate G signs the release manifest, writes the version's artifacts
//!    (write-once), appends the manifest to the ledger, and only then moves
//!    the release pointer by compare-and-swap. A crash anywhere leaves the
//!    pointer on the old version or the new one, never in between.

use bytes::Bytes;
use kfm_core::{Acquisition, DatasetId, Digest};
use kfm_store::Store;

use crate::catalog::{self, Artifact, CatalogInput};
use crate::gates::{Gate, GateResult};
use crate::ingest::{AcquisitionEntry, acquisitions, load_spec};
use crate::prepare::{Processed, artifact_list, gate_b, gate_c, plan_of, process};
use crate::publish::RunContext;
use crate::qa::QaReport;
use crate::records::{self, DigestSet, LedgerRef, ResourceDescriptor};
use crate::release::next_version;

pub use crate::error::PromoteError;
pub use crate::run::{PolicyInfo, PromoteOutcome, PromoteRequest, new_run_id, ts};

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
    crate::runs::can_record(&req.ledger, &req.signer)?;
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
    // The run's files: work/<ds>/<run_id>/ (WORK holds the normalised
    // intermediate of this run), published from there by hard links.
    let scratch = req.store.scratch(&format!("{ds}/{run_id}"))?;
    let gate_a = match req.store.raw().local_object(&raw_key, &scratch).await {
        Err(e) => GateResult::cannot(
            Gate::A,
            format!("the acquisition {} cannot be read: {e}", acq.object),
        ),
        Ok(raw) => {
            let (spec2, acq2, dir) = (spec.clone(), acq.clone(), scratch.dir().to_path_buf());
            let (ds2, vid2, rid2) = (ds.to_owned(), version_id.clone(), run_id.clone());
            let run = tokio::task::spawn_blocking(move || {
                process(&spec2, &acq2, &raw.path, &dir, &ds2, &vid2, &rid2)
            })
            .await;
            match run {
                Err(e) => GateResult::cannot(Gate::A, format!("processing stopped: {e}")),
                Ok(Err(r)) => r,
                Ok(Ok((p, notes))) => {
                    processed = Some(p);
                    GateResult::pass(Gate::A, notes)
                }
            }
        }
    };

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
        (Some(p), Some(Ok(plan))) if p.generalized() => Some(plan.describe()),
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
            crate::runs::ClaimError::Encode(e) => {
                GateResult::cannot(Gate::F, format!("the version claim cannot be encoded: {e}"))
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
    // Invariant: a run whose receipt cannot reach the ledger is "cannot
    // evaluate" for the operator, never a quarantine of the dataset.
    let receipt = match (receipt_env, req.ledger.as_ref()) {
        (Err(e), _) => Err(GateResult::cannot(Gate::F, e)),
        (_, Err(e)) => {
            return Err(PromoteError::Ledger(format!(
                "the ledger is not available: {e}"
            )));
        }
        (Ok(env), Ok(ledger)) => match ledger.append(env.clone()).await {
            Ok(a) => Ok((env, a.index)),
            // Reached, and refused on what the receipt holds: the run's own
            // failure.
            Err(e @ kfm_ledger::LedgerError::EntryTooLarge { .. }) => Err(GateResult::fail(
                Gate::F,
                vec![format!("the ledger refused the receipt: {e}")],
            )),
            Err(e) => {
                return Err(PromoteError::Ledger(format!(
                    "the ledger did not take the receipt: {e}"
                )));
            }
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
