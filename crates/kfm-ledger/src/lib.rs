//! KFM's audit ledger.
//!
//! Every mutation and every governed read leaves an entry in an append-only
//! Merkle log (RFC 9162), so that anyone holding a checkpoint can verify that
//! an entry is included and that history was never rewritten.
//!
//! Layers, each usable alone: [`merkle`] (hashing, proofs, and the
//! verification functions an auditor needs, with nothing else from KFM),
//! [`checkpoint`] (signed C2SP checkpoints), [`tiles`] (C2SP paths and entry
//! bundles) and [`log`] (the ledger on the store: group commit, one writer,
//! recovery, offline verification).

pub mod checkpoint;
pub mod durable;
pub(crate) mod journal;
pub mod log;
pub mod merkle;
pub mod tiles;
pub mod witness;

pub use checkpoint::{
    CheckpointError, LedgerSigner, VerifiedCheckpoint, generate_key, verify_checkpoint,
};
pub use log::{
    Appended, CHECKPOINT, Closed, EntrySource, Event, Extends, Guards, Health, InclusionProof,
    Ledger, LedgerError, LedgerOptions, LedgerView, LocalLedger, PublishFuture, Publisher,
    Reference, VerifyReport, verify, verify_against,
};
pub use merkle::{
    Hash, MerkleTree, ProofError, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
pub use witness::{Witness, WitnessError, read_witness};
