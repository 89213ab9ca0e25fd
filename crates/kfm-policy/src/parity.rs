//! Policy parity: a bundle loaded *for an environment* must be the bundle
//! that environment pins, byte for byte, so that every place an environment
//! runs decides with the same rules. There is no flag to
//! skip the check; an unpinned environment is refused like a mismatch.

use std::path::Path;

use kfm_core::{Digest, Environment, EnvironmentPins};

use crate::bundle::{Bundle, BundleError};
use crate::decision::{DecisionPoint, Options};

/// Why a bundle may not run in an environment.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("environment `{env}` pins no policy bundle digest; bundle {actual} cannot be verified")]
    NotPinned { env: Environment, actual: Digest },
    #[error("policy bundle digest {actual} differs from the digest pinned for `{env}`: {pinned}")]
    Mismatch {
        env: Environment,
        pinned: Digest,
        actual: Digest,
    },
}

impl ParityError {
    /// How to get out of this state, for the CLI edge.
    pub fn hint(&self) -> String {
        match self {
            Self::Bundle(e) => e.hint().to_owned(),
            Self::NotPinned { env, .. } | Self::Mismatch { env, .. } => format!(
                "review the policy change (kfm policy diff), then pin it: kfm policy pin --env {env}"
            ),
        }
    }
}

/// Checks `bundle` against `pins`.
pub fn check_pin(
    bundle: &Bundle,
    env: Environment,
    pins: &EnvironmentPins,
) -> Result<(), ParityError> {
    match &pins.policy.bundle_digest {
        None => Err(ParityError::NotPinned {
            env,
            actual: *bundle.digest(),
        }),
        Some(pinned) if pinned != bundle.digest() => Err(ParityError::Mismatch {
            env,
            pinned: *pinned,
            actual: *bundle.digest(),
        }),
        Some(_) => Ok(()),
    }
}

/// Loads the bundle in `dir` for `env` and prepares its decision point,
/// refusing when the digest is not the pinned one.
pub fn load_for_environment(
    dir: &Path,
    env: Environment,
    pins: &EnvironmentPins,
    options: Options,
) -> Result<(Bundle, DecisionPoint), ParityError> {
    let bundle = Bundle::load(dir)?;
    check_pin(&bundle, env, pins)?;
    let point = DecisionPoint::new(&bundle, options)?;
    Ok((bundle, point))
}
