//! KFM's audit ledger.
//!
//! Every mutation and every governed read leaves an entry in an append-only
//! Merkle log (RFC 9162), so that anyone holding a checkpoint can verify that
//! an entry is included and that history was never rewritten.
//!
//! Built so far: [`merkle`], the tree hashing, proof generation and the
//! verification functions, usable on their own by any auditor (they need
//! nothing else from KFM). The C2SP tlog-tiles layout on the store, signed
//! checkpoints, group commit and crash recovery build on it.

pub mod checkpoint;
pub mod log;
pub mod merkle;
pub mod tiles;

pub use checkpoint::{
    CheckpointError, LedgerSigner, VerifiedCheckpoint, generate_key, verify_checkpoint,
};
pub use log::{
    Appended, CHECKPOINT, InclusionProof, Ledger, LedgerError, LedgerOptions, LedgerView,
    VerifyReport, verify,
};
pub use merkle::{
    Hash, MerkleTree, ProofError, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
