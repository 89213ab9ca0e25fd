//! `environments/<env>.toml`: what each deployment environment pins.

use serde::{Deserialize, Serialize};

use crate::config::Environment;

/// `environments/<env>.toml`: what each environment pins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentPins {
    #[serde(default)]
    pub policy: PolicyPin,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPin {
    /// Digest of the policy bundle this environment must run; `None` until
    /// `kfm policy pin` writes it.
    #[serde(default)]
    pub bundle_digest: Option<crate::Digest>,
}

impl EnvironmentPins {
    /// The text `kfm init` writes; `digest` pins the bundle it installed.
    pub fn default_toml(env: Environment, digest: Option<&crate::Digest>) -> String {
        let pin = match digest {
            Some(d) => format!("bundle_digest = \"{d}\"\n"),
            None => "# bundle_digest = \"sha256:...\"\n".to_owned(),
        };
        format!(
            "# Pins for the {env} environment. A runtime whose policy bundle digest differs\n\
             # from the pin refuses to become ready. Written by `kfm policy pin --env {env}`.\n\n\
             [policy]\n{pin}"
        )
    }
}
