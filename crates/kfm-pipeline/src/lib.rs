//! The truth path: RAW → WORK → PROCESSED → CATALOG → PUBLISHED, or
//! QUARANTINE.
//!
//! - [`ingest`]: a dataset's source into `raw/`, exactly as received.
//! - [`promote`]: normalise ([`normalize`]), then the Promotion Contract's
//!   gates A–G ([`gates`]): identity, licensing, sensitivity
//!   ([`generalize`]), the catalog triplet ([`catalog`]), QA ([`qa`]), the
//!   run receipt in the ledger, the signed release manifest and the
//!   compare-and-swap of the release pointer ([`records`], [`release`]).
//! - [`release::rollback`]: back to an earlier version through the same gates.
//! - [`quarantine`]: what failed, and why.
//! - [`runs`]: claims, release history, interrupted and aborted runs.

pub mod catalog;
mod error;
pub mod fault;
pub mod fgb;
pub mod gates;
pub mod generalize;
pub mod ingest;
pub mod normalize;
pub mod prepare;
pub mod process;
pub mod promote;
mod publish;
pub mod qa;
pub mod quarantine;
pub mod records;
pub mod release;
mod rollback;
mod run;
pub mod runs;

pub use gates::{Gate, GateResult, Status};
pub use ingest::{
    AcquisitionEntry, IngestError, IngestOutcome, IngestRequest, acquisitions, ingest, load_spec,
};
pub use promote::{PolicyInfo, PromoteError, PromoteOutcome, PromoteRequest, promote};
pub use release::{
    RollbackOutcome, RollbackRequest, VerifiedRelease, rollback, verify_pointer, verify_release,
};
