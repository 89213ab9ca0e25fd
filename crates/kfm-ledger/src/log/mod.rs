//! The ledger on the store: entry bundles and hash tiles (C2SP tlog-tiles)
//! plus a signed checkpoint, with group commit, a single writer, recovery
//! of a torn tail, guards against a log that shrank or vanished, and full
//! offline verification.
//!
//! Durability order: no appender learns its index before its entry is
//! durable. On a directory that is when the journal record holding its
//! batch (and the batch's signed checkpoint) has been synced; tiles and
//! bundles follow in rounds, made durable together before the checkpoint
//! object moves to cover them. On S3 every tile and bundle of the batch is
//! acknowledged before the checkpoint is swapped in by compare-and-swap.
//!
//! What may be found beyond the checkpoint object after a crash: tiles and
//! bundles of a round the journal still holds (kept, completed if a crash
//! cut them short), or on S3 the objects of one batch whose checkpoint
//! never landed (discarded: never acknowledged). Anything else beyond it,
//! or a log smaller than the witnessed checkpoint or than what a release
//! pointer names, is refused by every writer and reader (`guard`).
//!
//! Files: `load` (reading the store and the journal), `guard` (what the
//! witness and the release pointers vouch for), `verify` (offline checks),
//! `view` (readers), `writer` (the single writer: open, append, read, prove),
//! `commit` (its group-commit task), `sync` (the journal thread),
//! `tiles` (the tile writer and the journal's upkeep), `shared` (the
//! ledger as the processes of a workspace share it: the writer, or a client
//! of it), `wire` (the writer's socket) and `published` (the ledger of a
//! platform whose log a sequencer writes from an event stream).

mod client;
mod commit;
mod guard;
mod load;
mod published;
mod shared;
mod sync;
mod tiles;
mod verify;
mod view;
mod wire;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kfm_store::StoreError;

use crate::checkpoint::CheckpointError;
use crate::merkle::{Hash, ProofError};
use crate::tiles::MAX_ENTRY;

pub use published::{PublishFuture, Publisher};
pub use shared::{Event, Ledger};
pub use verify::{Extends, VerifyReport, verify, verify_against};
pub use view::{EntrySource, LedgerView};
pub use wire::MAX_EVENT;
pub use writer::{Closed, Health, LocalLedger};

/// Key of the checkpoint inside the audit zone.
pub const CHECKPOINT: &str = "checkpoint";

/// Why a ledger operation failed. Each variant names the place involved.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "entry of {len} bytes refused: the ledger takes entries up to {MAX_ENTRY} bytes; store large payloads by digest and append the digest"
    )]
    EntryTooLarge { len: usize },
    #[error(
        "another writer holds this ledger; only one writer may append (history must never fork)"
    )]
    Locked,
    #[error(
        "the checkpoint was moved by another writer since this one opened the ledger; this writer stops (reopen to continue)"
    )]
    Superseded,
    #[error("{place}: {what}")]
    Corrupt { place: String, what: String },
    /// The log is smaller than, or inconsistent with, what something
    /// outside it vouches for: nothing was changed.
    #[error(
        "{0}. Nothing was changed and no writer will start: restore the audit zone and the journal from a copy that holds these entries (docs/runbooks/restore.md)"
    )]
    Refused(String),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Witness(#[from] crate::witness::WitnessError),
    #[error(
        "the ledger writer stopped after an earlier failure ({0}); reopen the ledger to recover"
    )]
    Failed(String),
    /// The workspace's writer (another process) refused or failed a call.
    #[error("the workspace's ledger writer (another process) answered: {0}")]
    Writer(String),
    /// No writer could be reached or become: nothing was appended.
    #[error("the ledger writer cannot be reached: {0}")]
    Unreachable(String),
}

fn corrupt(place: impl Into<String>, what: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        place: place.into(),
        what: what.into(),
    }
}

fn poisoned() -> LedgerError {
    LedgerError::Failed("ledger state lock poisoned".into())
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A ledger index named outside the ledger (a release pointer, a receipt
/// recorded in the catalog): the log must hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// What names it, for messages (`published/ks-places.json`).
    pub what: String,
    pub index: u64,
}

/// What outside the audit zone vouches for the ledger: the checkpoint
/// witnessed by this workspace's writers, and the entries referenced
/// elsewhere in the store. Every writer and reader checks the log against
/// them before trusting it.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    /// The witness file (see [`crate::witness`]). `None` only where no
    /// workspace exists (a bare store in a test, an auditor's copy).
    pub witness: Option<PathBuf>,
    pub references: Vec<Reference>,
}

/// Group-commit settings.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Ledger origin: the first line of every checkpoint.
    pub origin: String,
    /// Most entries committed in one batch.
    pub batch_max: usize,
    /// Longest a batch waits for more entries once it has one.
    pub max_wait: Duration,
    /// How long the writer keeps retrying a write that fails (a full disk,
    /// no file descriptors left, an I/O error) before it gives up and
    /// fails for good (then [`Ledger::health`] says so, and a server
    /// reports itself unhealthy so that it is restarted).
    pub give_up_after: Duration,
    /// How long committed batches accumulate before a round of tiles
    /// (directory stores; see `tiles::MATERIALIZE_EVERY`). Tests set it
    /// long to keep entries in the journal only.
    pub tile_every: Duration,
    pub guards: Guards,
    /// Where the writer listens for the other processes of its workspace
    /// (a Unix socket). With it, opening the ledger while another process
    /// writes makes this one its client instead of failing
    /// ([`LedgerError::Locked`]); without it, only one process may open it.
    pub socket: Option<PathBuf>,
    /// How long to keep trying to reach the writer, or to become it, before
    /// a call fails with [`LedgerError::Unreachable`].
    pub reach_writer: Duration,
}

impl LedgerOptions {
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            batch_max: 1024,
            max_wait: Duration::from_micros(200),
            give_up_after: Duration::from_secs(120),
            tile_every: tiles::MATERIALIZE_EVERY,
            guards: Guards::default(),
            socket: None,
            reach_writer: Duration::from_secs(60),
        }
    }
}

/// What an acknowledged (durable) append returns.
#[derive(Debug, Clone)]
pub struct Appended {
    pub index: u64,
    pub leaf_hash: Hash,
    /// Tree size of the checkpoint that covers this entry.
    pub size: u64,
    /// That checkpoint, a signed note.
    pub checkpoint: Arc<Vec<u8>>,
}

/// An inclusion proof with the signed checkpoint it verifies against.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: Arc<Vec<u8>>,
}
