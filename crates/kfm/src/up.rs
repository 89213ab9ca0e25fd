//! `kfm up`: the quickstart on the embedded default (local directory store).

use std::io::Write;

use serde::Serialize;

use crate::cli::{Format, UpArgs};
use crate::failure::Failure;
use crate::ingest::{default_actor, describe, ingest_one, outcome_name};
use crate::output::print_json;
use crate::samples::{EXPECTED_QUARANTINE, SAMPLE_SPECS, SAMPLES};
use crate::status::{StatusReport, collect, print_human};
use crate::workspace::Workspace;

#[derive(Serialize)]
struct UpReport {
    init: crate::init::InitReport,
    ingested: Vec<(String, &'static str)>,
    /// (version id, published?) for each sample promoted by this run.
    promoted: Vec<(String, bool)>,
    status: StatusReport,
    policy: PolicySummary,
}

/// The policy bundle as the runtime would load it: pinned, tested.
#[derive(Serialize)]
struct PolicySummary {
    digest: String,
    revision: String,
    environment: String,
    tests_passed: usize,
    tests_failed: usize,
}

pub async fn run(args: &UpArgs, fmt: Format) -> Result<u8, Failure> {
    let init = crate::init::create(&args.dir)?;
    let ws = Workspace::open(&args.dir)?;
    let datasets = ws.datasets_dir();
    for (name, bytes) in SAMPLES {
        let path = datasets.join(name);
        // Never overwrite: a user may have edited a sample.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => f
                .write_all(bytes)
                .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Failure::input(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
    }
    let store = ws.store()?;
    let mut ingested = Vec::new();
    for spec in SAMPLE_SPECS {
        let outcome = ingest_one(&store, &datasets.join(spec), default_actor(None)).await?;
        if fmt == Format::Human {
            println!("{}", describe(&outcome));
        }
        ingested.push((
            outcome.acquisition().digest.to_string(),
            outcome_name(&outcome),
        ));
    }
    // Load the policy exactly as a runtime would (refused unless pinned,
    // exit 2): promotion records its digest, and its tests run below
    // through the same decision point.
    let (bundle, _point) = crate::policy::load_pinned(&ws)?;
    let deps = crate::promote::deps(&ws).await?;
    let mut promoted = Vec::new();
    let mut unexpected = Vec::new();
    for spec in SAMPLE_SPECS {
        let ds = spec.trim_end_matches(".yaml");
        let Ok(id) = ds.parse::<kfm_core::DatasetId>() else {
            continue;
        };
        if store
            .published()
            .read(&kfm_pipeline::records::pointer_key(ds))
            .await?
            .is_some()
        {
            if fmt == Format::Human {
                println!("\n{ds}: already published (`kfm promote {ds}` makes a new version)");
            }
            continue;
        }
        let out =
            match crate::promote::run_promote(&deps, &id, None, default_actor(None), fmt).await {
                Ok(o) => o,
                Err(e) => {
                    deps.close().await;
                    return Err(e);
                }
            };
        if fmt == Format::Human {
            println!();
            crate::promote::print_outcome(&out);
        }
        if out.published != (ds != EXPECTED_QUARANTINE) {
            unexpected.push(ds.to_owned());
        }
        promoted.push((out.version_id.clone(), out.published));
    }
    deps.close().await;
    let status = collect(&ws).await?;
    let tests = kfm_policy::runner::run(&bundle, &kfm_policy::runner::TestOptions::default())
        .map_err(|e| Failure::input(e.to_string()))?;
    let policy = PolicySummary {
        digest: bundle.digest().to_string(),
        revision: bundle.revision().to_owned(),
        environment: ws.config.environment.to_string(),
        tests_passed: tests.passed,
        tests_failed: tests.failed,
    };
    let code = if tests.ok() && unexpected.is_empty() {
        0
    } else {
        crate::failure::EXIT_RULE
    };
    match fmt {
        Format::Json => print_json(&UpReport {
            init,
            ingested,
            promoted,
            status,
            policy,
        })?,
        Format::Human => {
            println!();
            print_human(&status);
            println!(
                "\npolicy: bundle {} (revision {}), pinned for {}; {} policy tests passed, {} failed",
                policy.digest,
                policy.revision,
                policy.environment,
                policy.tests_passed,
                policy.tests_failed
            );
            if !unexpected.is_empty() {
                println!(
                    "\nUNEXPECTED: {} did not end as the samples should (only {EXPECTED_QUARANTINE} belongs in quarantine)",
                    unexpected.join(", ")
                );
            }
            println!(
                "\nKFM is up in {}: the samples went through gates A-G ({EXPECTED_QUARANTINE} is quarantined:\n\
                 its license is unknown) and the policy is pinned. The governed API is not built yet.\n\
                 Try `kfm status`, `kfm quarantine list`, `kfm ledger verify` (see README).",
                args.dir.display()
            );
        }
    }
    Ok(code)
}
