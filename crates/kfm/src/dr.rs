//! `kfm dr drill`: wiring the disaster-recovery drill (the projection half
//! is `kfm_projection::drill`; the ledger's offline verification is
//! `kfm_ledger::verify`; the policy pin check is `kfm_policy::check_pin`).

use std::time::Instant;

use kfm_core::dsse::Signer;
use kfm_projection::drill::{self, DrillLayer, DrillReceipt, LedgerState, PolicyState};
use kfm_projection::{PgTarget, Projector};

use crate::cli::{DrCommand, DrillArgs, Format};
use crate::failure::{EXIT_RULE, Failure};
use crate::output::print_json;
use crate::workspace::Workspace;

pub(crate) async fn run(
    ws: Option<&std::path::Path>,
    cmd: &DrCommand,
    fmt: Format,
) -> Result<u8, Failure> {
    let DrCommand::Drill(a) = cmd;
    let ws = Workspace::find(ws)?;
    drill(&ws, a, fmt).await
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The pinned policy, checked as a server starting in this environment
/// would check it.
fn policy_state(ws: &Workspace) -> PolicyState {
    let dir = ws.dir.join(&ws.config.policy_bundle);
    let bundle = match kfm_policy::Bundle::load(&dir) {
        Ok(b) => b,
        Err(e) => {
            return PolicyState {
                digest: None,
                pinned: false,
                problem: Some(format!("policy bundle {}: {e}", dir.display())),
            };
        }
    };
    let digest = Some(bundle.digest().to_string());
    let pinned = crate::policy::read_pins(ws, ws.config.environment)
        .map_err(|f| f.message)
        .and_then(|pins| {
            kfm_policy::check_pin(&bundle, ws.config.environment, &pins).map_err(|e| e.to_string())
        });
    PolicyState {
        digest,
        pinned: pinned.is_ok(),
        problem: pinned.err(),
    }
}

async fn drill(ws: &Workspace, a: &DrillArgs, fmt: Format) -> Result<u8, Failure> {
    let t0 = Instant::now();
    let started_at = now();
    let configured = crate::projection::target(ws)?;
    let ls = crate::ledger::signer(ws)?;
    let signer = Signer::new(ls.signing_key());
    let projector_signer = Signer::new(ls.signing_key());
    let vkey = ls.verifier_key().to_owned();
    let key = crate::ledger::dsse_key(&vkey)?;
    let origin = ws.config.ledger_origin.clone();
    let store = ws.store()?;
    let mut problems = Vec::new();

    // 1. The ledger, offline: every tile, the checkpoint, the witness and
    //    the references the pointers make.
    let guards = ws.ledger_guards(&store).await?;
    let rpo = match kfm_ledger::verify(&store.audit(), &vkey, &origin, &guards).await {
        Ok(r) => LedgerState {
            verified: true,
            size: r.size,
            root: hex::encode(r.root),
            problem: None,
        },
        Err(e) => {
            problems.push(format!("the ledger does not verify: {e}"));
            LedgerState {
                verified: false,
                size: 0,
                root: String::new(),
                problem: Some(e.to_string()),
            }
        }
    };
    // 2. The pinned policy.
    let policy = policy_state(ws);
    if let Some(p) = &policy.problem {
        problems.push(format!("policy: {p}"));
    }

    // 3. An empty database: the one named, or a scratch one.
    let (target, scratch) = match &a.into {
        Some(url) => (
            PgTarget {
                url: url.clone(),
                password: configured.password.clone(),
            },
            None,
        ),
        None => {
            let name = format!(
                "kfm_dr_{}_{}",
                chrono::Utc::now().format("%Y%m%d%H%M%S"),
                std::process::id()
            );
            let admin = kfm_projection::connect_to(&configured, Some("postgres")).await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| {
                    Failure::input(format!("cannot create the drill's scratch database: {e}"))
                        .hint("the [postgres] role needs CREATEDB, or pass --into URL of an empty database")
                })?;
            (configured.clone(), Some(name))
        }
    };
    let database = kfm_projection::describe(&target, scratch.as_deref());
    let (ledger, zones) = crate::projection::open(ws, &store, ls, "urn:kfm:dr").await?;
    let result = async {
        let client = kfm_projection::connect_to(&target, scratch.as_deref()).await?;
        let mut p =
            crate::projection::tuned(Projector::new(client, zones, key, projector_signer).await?)?;
        if scratch.is_none() && !p.is_empty().await? {
            return Err(Failure {
                code: EXIT_RULE,
                message: format!(
                    "{database} already holds projections: a drill rebuilds into an empty database"
                ),
                hint: Some(
                    "name an empty database with --into, or leave --into out for a scratch one"
                        .into(),
                ),
            });
        }
        // 4. Every projection, from the canonical store alone; then proof.
        let rebuilt = p.rebuild(&ledger).await?;
        problems.extend(rebuilt.problems.iter().cloned());
        let verified = p.verify(&ledger).await?;
        problems.extend(verified.problems.iter().cloned());
        let layers: Vec<DrillLayer> = verified
            .layers
            .iter()
            .map(|l| DrillLayer {
                dataset: l.dataset.clone(),
                layer: l.layer.clone(),
                table: l.table.clone(),
                rows: l.rows,
                projection_digest: l.digest.clone(),
                equal: l.problem.is_none(),
            })
            .collect();
        for l in verified.layers.iter().filter(|l| l.problem.is_some()) {
            problems.push(format!(
                "{}: {}",
                l.table,
                l.problem.as_deref().unwrap_or("")
            ));
        }
        // 5. Evidence for a sample of features of every layer.
        let evidence = p.sample_evidence(&ledger, &vkey, &origin, a.sample).await?;
        for e in evidence.iter().filter(|e| !e.resolved) {
            problems.push(format!(
                "{} {} feature {}: {}",
                e.dataset,
                e.layer,
                e.fid,
                e.problem.as_deref().unwrap_or("not resolved")
            ));
        }
        let passed = problems.is_empty() && rpo.verified && policy.pinned;
        let receipt = DrillReceipt {
            kind: drill::RECEIPT_KIND.into(),
            outcome: if passed { "passed" } else { "failed" }.into(),
            environment: ws.config.environment.to_string(),
            started_at: started_at.clone(),
            finished_at: now(),
            rto_seconds: (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            rpo: rpo.clone(),
            policy: policy.clone(),
            database: database.clone(),
            pointers_verified: rebuilt.loaded.len() as u64,
            layers,
            evidence,
            problems: problems.clone(),
            tool: format!("kfm {}", env!("CARGO_PKG_VERSION")),
        };
        let index = drill::record_receipt(&ledger, &signer, &receipt).await?;
        Ok((receipt, index))
    }
    .await;
    ledger.close().await;
    if let (Some(name), false) = (&scratch, a.keep)
        && let Ok(admin) = kfm_projection::connect_to(&configured, Some("postgres")).await
        && let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
    {
        eprintln!("warning: the scratch database {name} could not be dropped: {e}");
    }
    let (receipt, index) = result?;
    match fmt {
        Format::Json => {
            print_json(&serde_json::json!({"ledger_index": index, "receipt": receipt}))?
        }
        Format::Human => {
            println!(
                "drill {}: RTO {:.2} s; RPO: ledger entry {} (root {}); {} release pointer(s), {} table(s) rebuilt in {}",
                receipt.outcome.to_uppercase(),
                receipt.rto_seconds,
                receipt.rpo.size,
                receipt.rpo.root,
                receipt.pointers_verified,
                receipt.layers.len(),
                receipt.database
            );
            println!(
                "  policy {} ({}); {} of {} sampled features resolved to the canonical store and the ledger",
                receipt.policy.digest.as_deref().unwrap_or("?"),
                if receipt.policy.pinned {
                    "the pinned one"
                } else {
                    "NOT the pinned one"
                },
                receipt.evidence.iter().filter(|e| e.resolved).count(),
                receipt.evidence.len()
            );
            for p in &receipt.problems {
                println!("  PROBLEM {p}");
            }
            println!("  signed receipt at ledger index {index}");
        }
    }
    Ok(if receipt.outcome == "passed" {
        0
    } else {
        EXIT_RULE
    })
}
