//! The infrastructure gate (`kfm infra check`).
//!
//! Built so far: secrets in any text file ([`secrets`]: built-in rules,
//! keyword prefilter, regex set, entropy; gitleaks-format rule files) and
//! Kubernetes `Secret`s carrying `data` or `stringData`, over a whole tree,
//! deterministically ([`scan`]), reported as human text, JSON, SARIF 2.1.0 or
//! JUnit ([`output`]). YAML that does not parse, or holds an unrendered
//! template, stops the run (fail closed). Kubernetes workload rules,
//! NetworkPolicy reachability, Terraform, CI workflows, waivers and
//! plan/apply receipts are not built yet.

pub mod finding;
pub mod output;
pub mod scan;
pub mod secrets;

pub use finding::{Finding, Report, Rule};
pub use output::{Format, render};
pub use scan::{Options, ScanError, check};
