//! Rebuilding a ledger from the audit stream.
//!
//! Into an empty store only: every event from the first is checked,
//! deduplicated and integrated in stream order exactly as the sequencer
//! does, up to the last sequence the stream held when the replay began.
//! Because the sequencer's log is a function of the stream alone, the
//! replayed log ends at the same root as the one the sequencer built
//! (when the stream holds the ledger's whole history, i.e. the ledger
//! started on the event backbone).

use std::time::Duration;

use async_nats::jetstream;
use kfm_ledger::LocalLedger;

use crate::reader::Reader;
use crate::sequencer::{Seen, sort};
use crate::streams::Names;
use crate::{EventsError, js_err};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The last stream sequence read.
    pub last_seq: u64,
    /// Entries appended.
    pub entries: u64,
    /// Events skipped as already in the log.
    pub duplicates: u64,
    /// Events that fail their checks (dead-lettered when they were first
    /// read; not sent again).
    pub rejected: u64,
}

/// Replays the environment's audit stream into `ledger`, which must be
/// empty.
pub async fn replay(
    js: &jetstream::Context,
    names: &Names,
    ledger: &LocalLedger,
) -> Result<Replayed, EventsError> {
    if ledger.size() != 0 {
        return Err(EventsError::Refused(format!(
            "the target ledger already holds {} entries: replay rebuilds into an empty store only (nothing was changed)",
            ledger.size()
        )));
    }
    let mut stream = js
        .get_stream(&names.audit_stream)
        .await
        .map_err(|e| js_err(&format!("stream {}", names.audit_stream), e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| js_err("stream info", e))?
        .state
        .last_sequence;
    let mut out = Replayed {
        last_seq: 0,
        entries: 0,
        duplicates: 0,
        rejected: 0,
    };
    if last == 0 {
        return Ok(out);
    }
    let mut reader = Reader::open(js, names, 0).await?;
    let mut seen = Seen::of(ledger);
    while out.last_seq < last {
        let mut batch = reader.next_batch(1024, Duration::from_secs(10)).await?;
        if batch.is_empty() {
            return Err(js_err(
                "replay",
                format!(
                    "the stream stopped delivering at sequence {} of {last}",
                    out.last_seq
                ),
            ));
        }
        // Only what the stream held when the replay began.
        batch.retain(|m| m.seq <= last);
        if batch.is_empty() {
            break;
        }
        let sorted = sort(batch, names.env, ledger, &mut seen).await?;
        out.entries += sorted.entries.len() as u64;
        out.duplicates += sorted.duplicates;
        out.rejected += sorted.dead.len() as u64;
        if !sorted.entries.is_empty() {
            ledger.append_in_order(sorted.entries).await?;
        }
        out.last_seq = sorted.last_seq;
    }
    Ok(out)
}
