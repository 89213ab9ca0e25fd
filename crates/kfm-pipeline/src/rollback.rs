//! Rollback: the release pointer moved back to an earlier version that a
//! pointer once named, through the same gates as a promotion (every file
//! re-verified, license and label re-judged now, the catalog re-checked, a
//! receipt in the ledger, then the compare-and-swap).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kfm_core::dsse::IN_TOTO_PAYLOAD_TYPE;
use kfm_core::{DatasetId, Digest, Envelope, LicenseId, PolicyLabel, Signer};
use kfm_ledger::Ledger;
use kfm_store::{Store, StoreError};
use serde::Serialize;

use crate::error::PromoteError;
use crate::gates::{Gate, GateResult};
use crate::records::{
    self, DigestSet, LedgerRef, POINTER_KIND, PolicyRef, RECEIPT_PREDICATE, ReleasePointer,
    ResourceDescriptor, RunPredicate, STATEMENT_TYPE, Statement, ToolVersion, manifest_of,
};
use crate::release::{Reverified, manifest_bytes};
use crate::run::{PolicyInfo, new_run_id, ts};

/// A rollback request: like a promotion, every dependency may be missing.
pub struct RollbackRequest<'a> {
    pub store: &'a Store,
    pub dataset: &'a DatasetId,
    pub to: u64,
    pub actor: String,
    pub policy: Result<PolicyInfo, String>,
    pub signer: Result<&'a Signer, String>,
    pub ledger: Result<&'a Ledger, String>,
    pub now: DateTime<Utc>,
    /// How long runs' scratch under work/ is kept.
    pub work_keep: chrono::Duration,
    pub on_gate: &'a (dyn Fn(Gate) + Sync),
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackOutcome {
    pub run_id: String,
    pub dataset: String,
    pub version_id: String,
    pub rolled_back: bool,
    pub gates: Vec<GateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<LedgerRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<ReleasePointer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_report: Option<String>,
    /// Earlier runs of this dataset found interrupted, recorded as aborted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<crate::runs::AbortedRecord>,
}
/// Moves the pointer back to an earlier version, through the same gates:
/// every artifact re-verified (A), license and label re-judged under the
/// current policy and date (B, C), the catalog triplet re-checked (D), the
/// stored QA report (E), a rollback receipt in the ledger (F), then the
/// compare-and-swap (G).
pub async fn rollback(req: RollbackRequest<'_>) -> Result<RollbackOutcome, PromoteError> {
    let ds = req.dataset.as_str();
    let v = req.to;
    let run_id = new_run_id(req.now);
    let version_id = format!("{ds}@v{v}");
    crate::runs::can_record(&req.ledger, &req.signer)?;
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
    // Invariant: only a version a release pointer has named may be
    // restored. A version whose run stopped before its pointer moved was
    // never released, whatever its files say.
    if !crate::runs::ever_released(req.store, ds, v).await? {
        let run = crate::runs::runs(req.store, ds, false)
            .await?
            .into_iter()
            .find(|r| r.version == v && r.operation == "promote");
        let why = match run {
            Some(r) => format!(
                "its run {} stopped before the pointer moved ({}); promote the dataset again instead",
                r.run_id,
                match r.state {
                    crate::runs::RunState::Aborted { .. } => "recorded as aborted",
                    crate::runs::RunState::Quarantined { .. } => "quarantined",
                    _ => "interrupted",
                }
            ),
            None => "no run made it (see `kfm status`)".to_owned(),
        };
        return Err(PromoteError::NeverReleased {
            dataset: ds.to_owned(),
            version: v,
            why,
        });
    }
    let (mkey, mbytes) = manifest_bytes(req.store, ds, v).await?;
    let pointer_before = req
        .store
        .published()
        .read(&records::pointer_key(ds))
        .await?;
    let mut gates = Vec::new();

    (req.on_gate)(Gate::A);
    let manifest = match (&req.signer, Envelope::parse(&mbytes)) {
        (Err(e), _) => Err(GateResult::cannot(
            Gate::A,
            format!("no key to verify the manifest: {e}"),
        )),
        (_, Err(e)) => Err(GateResult::fail(Gate::A, vec![format!("{mkey}: {e}")])),
        (Ok(s), Ok(env)) => manifest_of(&env, &s.verifying_key())
            .map_err(|e| GateResult::fail(Gate::A, vec![format!("{mkey}: {e}")])),
    };
    let mut files = None;
    let m = match manifest {
        Err(r) => {
            gates.push(r);
            None
        }
        Ok(m) => {
            let f = Reverified::of(req.store, &m).await;
            let mut problems = f.problems.clone();
            if m.dataset != ds || m.version != v {
                problems.push(format!(
                    "{mkey} describes {}, not {version_id}",
                    m.version_id
                ));
            }
            gates.push(if problems.is_empty() {
                GateResult::pass(
                    Gate::A,
                    vec![format!(
                        "manifest signature valid; {} artifacts re-verified",
                        m.artifacts.len() + m.catalog.len()
                    )],
                )
            } else {
                GateResult::fail(Gate::A, problems)
            });
            files = Some(f);
            Some(m)
        }
    };
    let doc = |suffix: &str| files.as_ref().and_then(|f| f.doc(suffix));

    (req.on_gate)(Gate::B);
    gates.push(match (&m, &req.policy) {
        (None, _) => GateResult::cannot(Gate::B, "no verified manifest (gate A)"),
        (_, Err(e)) => GateResult::cannot(Gate::B, format!("the policy's license table is unavailable: {e}")),
        (Some(m), Ok(p)) => {
            let id = LicenseId::try_from(m.license.clone());
            let attribution = doc("stac/collection.json")
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|s| s["kfm:attribution"].as_str().map(str::to_owned));
            match id {
                Err(e) => GateResult::fail(Gate::B, vec![e.to_string()]),
                Ok(id) => {
                    let f = crate::gates::license_facts(&id, &p.licenses);
                    if f.unknown {
                        GateResult::fail(Gate::B, vec![format!("license {id:?} is unknown")])
                    } else if !f.in_policy {
                        GateResult::fail(Gate::B, vec![format!("license {} is not known to the current policy bundle", id.as_str())])
                    } else if f.needs_attribution && attribution.is_none() {
                        GateResult::fail(Gate::B, vec![format!("license {} requires attribution, and this version's catalog has none", id.as_str())])
                    } else {
                        GateResult::pass(Gate::B, vec![format!("{} known to policy revision {}", id.as_str(), p.revision)])
                    }
                }
            }
        }
    });

    (req.on_gate)(Gate::C);
    gates.push(match &m {
        None => GateResult::cannot(Gate::C, "no verified manifest (gate A)"),
        Some(m) => match m.policy_label.parse::<PolicyLabel>() {
            Err(_) => GateResult::fail(
                Gate::C,
                vec![format!(
                    "policy_label {:?} is not in the vocabulary",
                    m.policy_label
                )],
            ),
            Ok(l)
                if let Some(r) =
                    crate::gates::release_rule(l, m.embargo_until, req.now.date_naive()) =>
            {
                r
            }
            Ok(PolicyLabel::RestrictedSensitiveLocation)
                if !m.artifacts.is_empty()
                    && !m.artifacts.iter().any(|a| a.role == "generalized") =>
            {
                GateResult::fail(
                    Gate::C,
                    vec![
                        "restricted_sensitive_location without its public_generalized derivative"
                            .into(),
                    ],
                )
            }
            Ok(l) => GateResult::pass(Gate::C, vec![format!("policy_label {}", l.as_str())]),
        },
    });

    (req.on_gate)(Gate::D);
    gates.push(match &m {
        None => GateResult::cannot(Gate::D, "no verified manifest (gate A)"),
        Some(m) => match files.as_ref().and_then(|f| f.triplet_problems(ds, v, m)) {
            Some(problems) if problems.is_empty() => {
                GateResult::pass(Gate::D, vec!["catalog triplet re-checked".into()])
            }
            Some(problems) => GateResult::fail(Gate::D, problems),
            None => GateResult::cannot(Gate::D, "the version's catalog triplet is incomplete"),
        },
    });

    (req.on_gate)(Gate::E);
    gates.push(
        match doc("qa.json").map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
            None => GateResult::cannot(Gate::E, "the version has no stored QA report"),
            Some(Err(e)) => GateResult::cannot(Gate::E, format!("qa.json is unreadable: {e}")),
            Some(Ok(q)) => {
                let failed: Vec<String> = q["checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["pass"] != serde_json::Value::Bool(true))
                    .map(|c| c["name"].as_str().unwrap_or("?").to_owned())
                    .collect();
                let cannot = q["cannot_evaluate"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
                if failed.is_empty() && !cannot {
                    GateResult::pass(Gate::E, vec!["stored QA report passed".into()])
                } else {
                    GateResult::fail(
                        Gate::E,
                        vec![format!(
                            "stored QA report did not pass: {}",
                            failed.join(", ")
                        )],
                    )
                }
            }
        },
    );

    let started = ts(req.now);
    let quarantine = |gates: Vec<GateResult>| async {
        let report = crate::quarantine::QuarantineReport {
            kind: crate::quarantine::QUARANTINE_KIND.into(),
            run_id: run_id.clone(),
            dataset: ds.to_owned(),
            operation: "rollback".into(),
            acquisition: None,
            spec_digest: None,
            version_attempted: v,
            gates: gates.clone(),
            qa: None,
            receipt: None,
            left_behind: Vec::new(),
            started_at: Some(started.clone()),
            finished_at: ts(Utc::now()),
        };
        let key = report.write(req.store).await?;
        Ok::<_, PromoteError>(RollbackOutcome {
            run_id: run_id.clone(),
            dataset: ds.to_owned(),
            version_id: version_id.clone(),
            rolled_back: false,
            gates,
            receipt: None,
            pointer: None,
            quarantine_report: Some(key),
            aborted: Vec::new(),
        })
    };
    let (Some(m), true) = (&m, gates.iter().all(GateResult::passed)) else {
        gates.push(GateResult::not_run(Gate::F));
        gates.push(GateResult::not_run(Gate::G));
        return quarantine(gates).await;
    };

    (req.on_gate)(Gate::F);
    let claim = crate::runs::RunClaim {
        kind: crate::runs::CLAIM_KIND.into(),
        run_id: run_id.clone(),
        dataset: ds.to_owned(),
        operation: "rollback".into(),
        version: v,
        actor: req.actor.clone(),
        started_at: ts(req.now),
        acquisition: None,
    };
    if let Err(e) = crate::runs::claim(req.store, &claim).await {
        gates.push(GateResult::cannot(
            Gate::F,
            format!("the rollback's run record cannot be written: {e}"),
        ));
        gates.push(GateResult::not_run(Gate::G));
        return quarantine(gates).await;
    }
    let receipt = match (&req.signer, &req.ledger, &req.policy) {
        (Err(e), _, _) => Err(GateResult::cannot(Gate::F, format!("no signing key: {e}"))),
        (_, Err(e), _) => Err(GateResult::cannot(
            Gate::F,
            format!("the ledger is not available: {e}"),
        )),
        (_, _, Err(e)) => Err(GateResult::cannot(
            Gate::F,
            format!("no policy bundle: {e}"),
        )),
        (Ok(signer), Ok(ledger), Ok(policy)) => {
            let statement = Statement {
                type_: STATEMENT_TYPE.into(),
                subject: vec![ResourceDescriptor {
                    name: mkey.clone(),
                    digest: DigestSet::from(&Digest::of(&mbytes)),
                }],
                predicate_type: RECEIPT_PREDICATE.into(),
                predicate: RunPredicate {
                    run_id: run_id.clone(),
                    operation: "rollback".into(),
                    outcome: "gates-passed".into(),
                    dataset: ds.to_owned(),
                    version_id: Some(version_id.clone()),
                    inputs: m
                        .artifacts
                        .iter()
                        .map(|a| ResourceDescriptor {
                            name: a.path.clone(),
                            digest: DigestSet::from(&a.digest),
                        })
                        .collect(),
                    parameters: serde_json::json!({"to": v}),
                    tools: vec![ToolVersion {
                        name: "kfm".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }],
                    gates: gates.clone(),
                    policy: Some(PolicyRef {
                        digest: policy.digest.to_string(),
                        revision: policy.revision.clone(),
                    }),
                    actor: req.actor.clone(),
                    started_at: ts(req.now),
                    finished_at: ts(Utc::now()),
                },
            };
            // Invariant: a signed receipt is the statement, whole; one that
            // cannot be encoded is not signed (gate F cannot evaluate).
            let bytes = serde_json::to_vec(&statement)
                .map_err(|e| e.to_string())
                .and_then(|payload| {
                    signer
                        .sign(IN_TOTO_PAYLOAD_TYPE, &payload)
                        .to_bytes()
                        .map_err(|e| e.to_string())
                });
            match bytes {
                Err(e) => Err(GateResult::cannot(
                    Gate::F,
                    format!("the rollback receipt cannot be encoded: {e}"),
                )),
                Ok(bytes) => match ledger.append(bytes.clone()).await {
                    Ok(a) => Ok(LedgerRef {
                        digest: Digest::of(&bytes).to_string(),
                        ledger_index: a.index,
                    }),
                    Err(e @ kfm_ledger::LedgerError::EntryTooLarge { .. }) => {
                        Err(GateResult::fail(
                            Gate::F,
                            vec![format!("the ledger refused the receipt: {e}")],
                        ))
                    }
                    // Cannot evaluate: nothing about the version was judged.
                    Err(e) => {
                        return Err(PromoteError::Ledger(format!(
                            "the ledger did not take the rollback receipt: {e}"
                        )));
                    }
                },
            }
        }
    };
    let receipt = match receipt {
        Err(r) => {
            gates.push(r);
            gates.push(GateResult::not_run(Gate::G));
            return quarantine(gates).await;
        }
        Ok(r) => r,
    };
    gates.push(GateResult::pass(
        Gate::F,
        vec![format!(
            "rollback receipt durable in the ledger at index {}",
            receipt.ledger_index
        )],
    ));

    (req.on_gate)(Gate::G);
    let pointer = ReleasePointer {
        kind: POINTER_KIND.into(),
        dataset: ds.to_owned(),
        version: v,
        version_id: version_id.clone(),
        manifest: mkey.clone(),
        manifest_digest: Digest::of(&mbytes).to_string(),
        ledger_index: receipt.ledger_index,
        ledger_entry_digest: receipt.digest.clone(),
        operation: "rollback".into(),
        moved_at: ts(Utc::now()),
        run_id: Some(run_id.clone()),
    };
    let pbytes = match records::record_bytes(&pointer) {
        Ok(b) => b,
        Err(e) => {
            gates.push(GateResult::cannot(
                Gate::G,
                format!("the pointer cannot be encoded: {e}"),
            ));
            let mut out = quarantine(gates).await?;
            out.receipt = Some(receipt);
            return Ok(out);
        }
    };
    crate::fault::point("before-swap");
    let pbytes = Bytes::from(pbytes);
    let swap = req
        .store
        .published()
        .compare_and_swap(
            &records::pointer_key(ds),
            pointer_before.as_ref().map(|p| &p.version),
            pbytes.clone(),
        )
        .await;
    if swap.is_ok() {
        if let Ok(l) = req.ledger.as_ref() {
            records::announce_release(l, &pointer, &pbytes).await;
        }
        crate::fault::point("after-swap");
        if let Err(e) = crate::runs::record_release(req.store, &pointer).await {
            tracing::warn!(error = %e, "the release history could not be written now; the next run adds it");
        }
    }
    match swap {
        Ok(_) => {
            gates.push(GateResult::pass(
                Gate::G,
                vec![format!("published/{ds}.json now names {version_id}")],
            ));
            Ok(RollbackOutcome {
                run_id,
                dataset: ds.to_owned(),
                version_id,
                rolled_back: true,
                gates,
                receipt: Some(receipt),
                pointer: Some(pointer),
                quarantine_report: None,
                aborted,
            })
        }
        Err(e) => {
            let why = match e {
                StoreError::Conflict { .. } => {
                    "the release pointer moved during the rollback (compare-and-swap lost)"
                        .to_owned()
                }
                other => format!("cannot move the release pointer: {other}"),
            };
            gates.push(GateResult::fail(Gate::G, vec![why]));
            let mut out = quarantine(gates).await?;
            out.receipt = Some(receipt);
            Ok(out)
        }
    }
}
