//! KFM's event backbone on NATS JetStream, for the platform that runs on
//! many processes and machines.
//!
//! Every ledger entry becomes a versioned event (a CloudEvents 1.0
//! envelope whose type and schema are committed under `contracts/events/`;
//! [`envelope`]) published to the environment's audit stream with the
//! entry's leaf hash as its `Nats-Msg-Id` (or, several entries batched by
//! a busy producer, a digest of their leaf hashes; [`producer`]): an entry is
//! durable when JetStream acknowledges it, and a retried publish is a
//! no-op. One sequencer ([`sequencer`]), elected by a lease in a JetStream
//! key-value bucket and fenced by the checkpoint compare-and-swap in the
//! store, reads the stream in order and integrates the entries into the
//! Merkle log exactly as the embedded writer does; what fails its checks
//! goes to a dead-letter subject with the reason. [`streams`] declares
//! and checks the streams and buckets (streams as code), [`replay`]
//! rebuilds a ledger from the stream.
//!
//! This crate never decides policy and never writes the store except
//! through the ledger's own writer (`kfm_ledger::LocalLedger`).

pub mod envelope;
pub mod producer;
mod reader;
pub mod replay;
pub mod sequencer;
pub mod streams;

use std::path::Path;

use kfm_core::config::{Environment, EventsConfig, SecretRef};

pub use async_nats;
pub use producer::JetStreamPublisher;
pub use streams::Names;

/// Why an events operation failed; each variant names what was involved.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot reach NATS at {url}: {what}")]
    Connect { url: String, what: String },
    #[error("events.credentials ({reference}): {what}")]
    Credentials { reference: String, what: String },
    #[error("JetStream {what}: {detail}")]
    JetStream { what: String, detail: String },
    /// The declared streams or buckets and the live ones differ, or the
    /// declaration is not durable enough for the environment.
    #[error("{0}")]
    Declaration(String),
    #[error(transparent)]
    Ledger(#[from] kfm_ledger::LedgerError),
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn js_err(what: &str, e: impl std::fmt::Display) -> EventsError {
    EventsError::JetStream {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// Connects to NATS with the configured credentials (a `.creds` file or
/// an nkey seed, by reference; relative files are read from `workspace`).
pub async fn connect(
    cfg: &EventsConfig,
    workspace: &Path,
) -> Result<async_nats::Client, EventsError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("kfm")
        .connection_timeout(std::time::Duration::from_secs(5))
        .max_reconnects(None);
    if let Some(r) = &cfg.credentials {
        let fail = |what: String| EventsError::Credentials {
            reference: r.to_string(),
            what,
        };
        let text = match r {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| fail(format!("environment variable {name} is not set")))?,
            SecretRef::File(p) => {
                let p = if p.is_absolute() {
                    p.clone()
                } else {
                    workspace.join(p)
                };
                std::fs::read_to_string(&p).map_err(|e| fail(format!("{}: {e}", p.display())))?
            }
        };
        let text = text.trim();
        opts = if text.contains("-----BEGIN NATS USER JWT-----") {
            opts.credentials(text)
                .map_err(|e| fail(format!("not a NATS credentials file: {e}")))?
        } else if text.starts_with("SU") {
            opts.nkey(text.to_owned())
        } else {
            return Err(fail(
                "neither a NATS .creds file nor a user nkey seed (SU…)".into(),
            ));
        };
    }
    let urls: Vec<&str> = cfg.url.split(',').map(str::trim).collect();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| EventsError::Connect {
            url: cfg.url.clone(),
            what: format!("{e}"),
        })?;
    let client = opts
        .connect(addrs)
        .await
        .map_err(|e| EventsError::Connect {
            url: cfg.url.clone(),
            what: e.to_string(),
        })?;
    Ok(client)
}

/// The environment's name as NATS names use it (upper case in stream and
/// bucket names, lower case in subjects).
pub(crate) fn env_upper(env: Environment) -> String {
    env.as_str().to_ascii_uppercase()
}
