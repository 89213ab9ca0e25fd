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
        let outcome = ingest_one(
            &store,
            &datasets.join(spec),
            Some(&ws.dir),
            default_actor(None),
        )
        .await?;
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
    let tokens = if code_ok(&tests, &unexpected) {
        Some(demo_tokens(&ws)?)
    } else {
        None
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
                 its license is unknown) and the policy is pinned.",
                args.dir.display()
            );
        }
    }
    if code != 0 {
        return Ok(code);
    }
    let Some(tokens) = tokens else {
        return Ok(code);
    };
    if args.no_serve {
        if fmt == Format::Human {
            println!(
                "demo tokens are in {} (--no-serve: not serving)",
                tokens.display()
            );
        }
        return Ok(code);
    }
    let prepared = crate::serve::prepare(&ws, args.listen, None, None).await?;
    if fmt == Format::Human {
        print_tour(&prepared.listen.to_string(), &tokens);
    }
    crate::serve::run_prepared(prepared, fmt == Format::Human).await
}

fn code_ok(tests: &kfm_policy::runner::TestReport, unexpected: &[String]) -> bool {
    tests.ok() && unexpected.is_empty()
}

/// The roles the tour shows, with what each may see.
const DEMO: [(&str, &str, &[&str]); 3] = [
    ("demo-public", "public", &[]),
    ("demo-researcher", "researcher", &["ks-sites-synthetic"]),
    ("demo-auditor", "auditor", &[]),
];

/// Revokes the previous demo tokens (their secrets were shown once and are
/// not kept) and creates fresh ones, written to `demo-tokens.env` (0600)
/// so the tour's curl lines can `source` them.
fn demo_tokens(ws: &Workspace) -> Result<std::path::PathBuf, Failure> {
    let path = crate::serve::tokens_path(ws);
    let err = |e: kfm_api::auth::TokenError| Failure::input(e.to_string());
    for t in kfm_api::auth::list(&path).map_err(err)? {
        if t.revoked_at.is_none() && DEMO.iter().any(|(n, ..)| *n == t.name) {
            kfm_api::auth::revoke(&path, &t.id).map_err(err)?;
        }
    }
    let mut env = String::from(
        "# Demo API tokens made by `kfm up` (shown once; hashes in auth/tokens.json)\n",
    );
    for (name, role, approve) in DEMO {
        let approve: Vec<String> = approve.iter().map(|s| (*s).to_owned()).collect();
        let (tok, _) = kfm_api::auth::create(&path, name, role, &approve).map_err(err)?;
        env.push_str(&format!("{}={tok}\n", role.to_uppercase()));
    }
    let out = ws.dir.join("demo-tokens.env");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&out)
        .and_then(|mut f| f.write_all(env.as_bytes()))
        .map_err(|e| Failure::input(format!("cannot write {}: {e}", out.display())))?;
    Ok(out)
}

fn print_tour(addr: &str, tokens: &std::path::Path) {
    let t = tokens.display();
    let tokens_text = std::fs::read_to_string(tokens).unwrap_or_default();
    println!("\nDemo tokens (also in {t}):");
    for l in tokens_text.lines().filter(|l| !l.starts_with('#')) {
        println!("  {l}");
    }
    println!(
        "\nA short tour (in another terminal):\n\
\x20 source {t}\n\
\x20 # 1. Sensitive sites, anonymously: coordinates generalized to the 0.1-degree grid\n\
\x20 curl -s 'http://{addr}/collections/ks-sites-synthetic/items?limit=1'\n\
\x20 # 2. The same with an approved researcher's token: precise coordinates\n\
\x20 curl -s -H \"Authorization: Bearer $RESEARCHER\" 'http://{addr}/collections/ks-sites-synthetic/items?limit=1'\n\
\x20 # 3. Denied looks exactly like nonexistent: the audit trail is for auditors only\n\
\x20 curl -si 'http://{addr}/audit/0000000000000000000000000000000000000000000000000000000000000000' | head -1\n\
\x20 curl -si -H \"Authorization: Bearer $PUBLIC\" 'http://{addr}/collections/ks-markers-unlicensed' | head -1\n\
\x20 # 4. An export carries its license and attribution\n\
\x20 curl -s 'http://{addr}/collections/ks-places/export?format=csv' | head -4\n\
\x20 # 5. Every answer has an audit reference; an auditor gets its entry and inclusion proof\n\
\x20 REF=$(curl -sI 'http://{addr}/collections' | tr -d '\\r' | awk 'tolower($1)==\"kfm-audit-ref:\" {{print $2}}')\n\
\x20 curl -s -H \"Authorization: Bearer $AUDITOR\" \"http://{addr}/audit/$REF\"\n\
\x20 # 6. Vector tiles for web maps and QGIS (TileJSON), governed like items\n\
\x20 curl -s 'http://{addr}/collections/ks-counties/tiles/WebMercatorQuad/tilejson.json'\n\
\x20 # Browsers (maps included): http://{addr}/collections/ks-places?f=html   OpenAPI: http://{addr}/openapi.json\n"
    );
}
