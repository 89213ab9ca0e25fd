//! The truth path: RAW → WORK → PROCESSED → CATALOG → PUBLISHED.
//!
//! Today this crate owns the first step, [`ingest`]: bringing a dataset's
//! source into `raw/` exactly as received, content-addressed, with an
//! acquisition record. Normalisation, the promotion gates, release and
//! quarantine build on it.

pub mod ingest;

pub use ingest::{
    AcquisitionEntry, IngestError, IngestOutcome, IngestRequest, acquisitions, ingest, load_spec,
};
