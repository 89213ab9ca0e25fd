//! The infrastructure gate (`kfm infra check`): keeps a deployment from weakening the platform.
//!
//! One pass over whole trees, hermetic (no network, no cluster, no cloud)
//! and deterministic (sorted output, byte-identical reruns):
//!
//! - [`secrets`]: secrets in any text file (built-in rules, keyword
//!   prefilter, regex set, entropy; gitleaks-format rule files);
//! - [`k8s`]: Kubernetes manifests, strictly parsed, with the workload rules
//!   (probes, resources, non-root, no privilege, no host namespaces or
//!   hostPath, digest-pinned images, secrets only by reference) and
//!   `Secret`s with `data`/`stringData`;
//! - [`netpol`]: default deny per namespace and the UI → data reachability
//!   proof;
//! - [`terraform`]: public buckets, encryption at rest, literal secrets;
//! - [`workflows`]: the GitHub Actions anti-skip rules;
//! - [`render`]: Kustomize overlays rendered, so the rules also judge what
//!   would be applied;
//! - [`waivers`]: the reviewed exceptions file;
//! - [`output`]: human text, JSON, SARIF 2.1.0, JUnit;
//! - [`receipt`]: plan and apply receipts, and the change-control mode.
//!
//! Whatever cannot be evaluated (a parse error, an unrendered template, an
//! unknown field in a known kind, a policy it cannot model) stops the run
//! with [`ScanError`]: the caller exits 2, never 0.

pub mod finding;
pub mod k8s;
pub mod netpol;
pub mod output;
pub mod platform;
pub mod receipt;
pub mod render;
pub mod scan;
pub mod secrets;
pub mod terraform;
pub mod waivers;
pub mod workflows;
pub mod yaml;

pub use finding::{Finding, Report, Rule};
pub use output::{Format, render};
pub use scan::{Options, ScanError, check};
