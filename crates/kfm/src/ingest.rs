//! `kfm ingest <spec>`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use kfm_pipeline::{IngestOutcome, IngestRequest};
use kfm_store::{IngestProgress, Store};
use serde::Serialize;

use crate::cli::{Format, IngestArgs};
use crate::failure::Failure;
use crate::output::{human_size, print_json};
use crate::workspace::Workspace;

/// Sources smaller than this finish before a bar would be worth drawing.
const BAR_THRESHOLD: u64 = 16 << 20;

#[derive(Serialize)]
struct Report<'a> {
    outcome: &'static str,
    acquisition: &'a kfm_core::Acquisition,
    /// Whether this acquisition is its dataset's newest (the one `kfm
    /// promote` takes by default).
    newest: bool,
    /// When it is not: the command that promotes exactly these bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    promote_with: Option<String>,
}

/// The actor recorded for an acquisition: `--actor`/`KFM_ACTOR`, else the
/// operating-system user running kfm.
pub fn default_actor(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| whoami::username().ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Ingests one spec into `store`, with a progress bar on a terminal. The
/// source must lie inside `within` (the workspace) unless it is `None`.
pub async fn ingest_one(
    store: &Store,
    spec: &Path,
    within: Option<&Path>,
    actor: String,
) -> Result<IngestOutcome, Failure> {
    let progress = Box::new(|total: u64| -> IngestProgress {
        if total < BAR_THRESHOLD || !std::io::stderr().is_terminal() {
            return Arc::new(|_| {});
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message("ingesting");
        Arc::new(move |n| {
            bar.set_position(n);
            if n >= total {
                bar.finish_and_clear();
            }
        })
    });
    let req = IngestRequest {
        spec_path: spec,
        within,
        actor,
        progress,
    };
    Ok(kfm_pipeline::ingest(store, req).await?)
}

pub fn describe(outcome: &IngestOutcome) -> String {
    let a = outcome.acquisition();
    match outcome {
        IngestOutcome::New(_) => format!(
            "ingested {}: {} ({}) -> {}",
            a.dataset,
            a.digest,
            human_size(a.size),
            a.object
        ),
        IngestOutcome::Completed(_) => format!(
            "ingested {}: {} ({}) -> {} (completed an earlier interrupted ingest)",
            a.dataset,
            a.digest,
            human_size(a.size),
            a.object
        ),
        IngestOutcome::Existing(_) => format!(
            "unchanged {}: {} was already acquired at {} by {}; nothing written",
            a.dataset,
            a.digest,
            a.acquired_at.format("%Y-%m-%d %H:%M:%S UTC"),
            a.actor
        ),
    }
}

pub fn outcome_name(o: &IngestOutcome) -> &'static str {
    match o {
        IngestOutcome::New(_) => "new",
        IngestOutcome::Existing(_) => "existing",
        IngestOutcome::Completed(_) => "completed",
    }
}

/// The newest recorded acquisition of the outcome's dataset, when it is not
/// the outcome's own.
async fn newer_than(
    store: &Store,
    o: &IngestOutcome,
) -> Result<Option<kfm_core::Acquisition>, Failure> {
    let a = o.acquisition();
    let newest = kfm_pipeline::acquisitions(store, &a.dataset)
        .await?
        .into_iter()
        .filter_map(|e| match e {
            kfm_pipeline::AcquisitionEntry::Recorded(r) => Some(*r),
            kfm_pipeline::AcquisitionEntry::Incomplete { .. } => None,
        })
        .next_back();
    Ok(newest.filter(|n| n.digest != a.digest))
}

pub async fn run(ws: Option<&Path>, args: &IngestArgs, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let store = ws.store()?;
    let within = (!args.allow_outside_workspace).then_some(ws.dir.as_path());
    let outcome = ingest_one(
        &store,
        &args.spec,
        within,
        default_actor(args.actor.as_deref()),
    )
    .await?;
    // Bytes acquired before but not the newest acquisition: `kfm promote`
    // would take the newest, so say how to promote these.
    let newer = newer_than(&store, &outcome).await?;
    let a = outcome.acquisition();
    let promote_with = newer
        .as_ref()
        .map(|_| format!("kfm promote {} --acquisition {}", a.dataset, a.digest));
    match fmt {
        Format::Json => print_json(&Report {
            outcome: outcome_name(&outcome),
            acquisition: a,
            newest: newer.is_none(),
            promote_with: promote_with.clone(),
        })?,
        Format::Human => {
            println!("{}", describe(&outcome));
            if let (Some(n), Some(cmd)) = (&newer, &promote_with) {
                println!(
                    "  these bytes are not {}'s newest acquisition ({} of {}), which `kfm promote {}` takes; to promote these: {cmd}",
                    a.dataset,
                    n.digest,
                    n.acquired_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    a.dataset
                );
            }
        }
    }
    Ok(0)
}
