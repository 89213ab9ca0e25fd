//! How the ledger makes its bytes durable, beside what the store's object
//! API gives every zone: the journal file a directory store's writer syncs
//! once per group of batches ([`journal_file`]), and the bulk creation of a
//! round's write-once objects with one sync for the round ([`bulk`]).
//!
//! Only the ledger writes this way, so it lives here and not in
//! `kfm-store`: the store provides the audit zone (create-once objects, the
//! checkpoint's compare-and-swap, the writer lock) and says where a
//! directory store keeps its files; the ledger decides when its bytes are
//! safe.
//!
//! Public for this crate's integration tests and the witness file; nothing
//! outside `kfm-ledger` should write the audit zone through it.

pub mod bulk;
pub mod journal_file;

pub use bulk::create_all_durable;
pub use journal_file::{
    FreshJournal, JOURNAL_BLOCK, JOURNAL_STEP, Journal, JournalFile, journal_files, journal_path,
    open_journal, open_zero_filled,
};
