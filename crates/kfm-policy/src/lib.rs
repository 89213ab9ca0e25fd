//! KFM's policy as code.
//!
//! A *bundle* (Rego v1 modules, data, a manifest, test fixtures) is
//! identified by a content digest that each environment pins. The
//! *decision point* evaluates a bundle's entry point with the `regorus`
//! engine and turns every failure (undefined, malformed, unknown
//! obligation, engine error, timeout) into a deny. The *test runner* runs
//! the bundle's Rego tests and YAML fixtures through that same decision
//! point, so CI and runtime cannot disagree.
//!
//! This crate never serves, stores or logs inputs: decision records hold
//! an input digest only.

pub mod bundle;
pub mod decision;
pub mod diff;
pub mod obligation;
pub mod parity;
pub mod record;
pub mod runner;

pub use bundle::{Bundle, BundleError, Manifest};
pub use decision::{
    DEFAULT_BUDGET, DEFAULT_ENTRYPOINT, Decision, DecisionPoint, Evaluation, Options, reasons,
};
pub use obligation::{Generalization, Obligation};
pub use parity::{ParityError, check_pin, load_for_environment};
pub use record::{DecisionRecord, input_digest};
