//! Publishing ledger entries to the audit stream.
//!
//! Each entry is wrapped in its versioned envelope and published with
//! `Nats-Msg-Id` = its leaf hash; it counts as durable when JetStream
//! acknowledges it. Publishes are pipelined (many acknowledgements awaited
//! at once) up to a bound, past which callers wait: back-pressure, not
//! unbounded memory. A publish whose acknowledgement does not come is sent
//! again, with the same id, for up to [`RETRY_FOR`] (shorter than the
//! stream's duplicate window, so that a retry of one that landed is
//! dropped by JetStream).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt as _;
use kfm_core::config::Environment;
use kfm_ledger::{Event, Hash, LedgerError, PublishFuture, Publisher};
use tokio::sync::{Semaphore, broadcast};

use crate::envelope;
use crate::streams::{DUPLICATE_WINDOW, Names};

/// How long one publish is retried before the caller is told it failed.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

const _: () = assert!(RETRY_FOR.as_secs() * 2 < DUPLICATE_WINDOW.as_secs());

/// How long shutdown waits for acknowledgements still outstanding.
const DRAIN_FOR: Duration = Duration::from_secs(15);

/// Publishes to the environment's audit stream (see the module docs).
pub struct JetStreamPublisher {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    source: String,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    failure: Arc<Mutex<Option<String>>>,
    published: Arc<AtomicU64>,
}

impl JetStreamPublisher {
    /// `source` names the producer in every envelope (`urn:kfm:api`).
    pub fn new(
        client: async_nats::Client,
        names: Names,
        source: &str,
        max_in_flight: usize,
    ) -> Self {
        let js = jetstream::new(client.clone());
        let max_in_flight = max_in_flight.max(1);
        Self {
            client,
            js,
            names,
            source: source.to_owned(),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            failure: Arc::new(Mutex::new(None)),
            published: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn env(&self) -> Environment {
        self.names.env
    }

    /// Entries acknowledged since this publisher started.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// Publishes one envelope until JetStream acknowledges it (or the retry
/// bound passes). A duplicate acknowledgement counts: the entry is there.
pub async fn publish_once(
    js: &jetstream::Context,
    subject: String,
    id: &str,
    body: Bytes,
    retry_for: Duration,
) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    let deadline = Instant::now() + retry_for;
    let mut wait = Duration::from_millis(50);
    loop {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let sent = js
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await;
        let outcome = match sent {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        let err = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let text = err.to_string();
        let transient = match err.kind() {
            K::TimedOut | K::BrokenPipe | K::MaxAckPending | K::StreamNotFound => true,
            K::Other => transient_api_error(&text),
            _ => false,
        };
        if !transient {
            return Err(text);
        }
        let err = text;
        if Instant::now() + wait > deadline {
            return Err(err);
        }
        tracing::warn!(error = %err, "publish not acknowledged; sending it again (same id)");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Whether a JetStream answer other than an acknowledgement is worth
/// sending again: anything that is not a JetStream API error (a transport
/// failure), and the API errors a cluster gives while it elects a leader or
/// loses a node (10008 "temporarily unavailable", no responders, no
/// suitable peers). A definitive refusal (too large, a wrong expected
/// sequence, …) is not retried.
fn transient_api_error(text: &str) -> bool {
    if !text.contains("error code") {
        return true;
    }
    [
        "error code 10008",
        "temporarily unavailable",
        "no responders",
        "no suitable peers",
    ]
    .iter()
    .any(|t| text.contains(t))
}

impl Publisher for JetStreamPublisher {
    fn publish(&self, entry: Vec<u8>, leaf: Hash) -> PublishFuture<Result<(), LedgerError>> {
        let body = envelope::envelope(&entry, &leaf, self.names.env, &self.source);
        let (kind, _) = envelope::classify(&entry);
        let subject = self.names.audit_subject(kind);
        let js = self.js.clone();
        let slots = self.slots.clone();
        let failure = self.failure.clone();
        let published = self.published.clone();
        Box::pin(async move {
            let body = body.map_err(|e| LedgerError::Failed(format!("event envelope: {e}")))?;
            // Invariant: at most `max_in_flight` publishes await their
            // acknowledgement; the rest wait here.
            let _permit = slots
                .acquire_owned()
                .await
                .map_err(|_| LedgerError::Failed("the publisher is closed".into()))?;
            let id = hex::encode(leaf);
            match publish_once(&js, subject, &id, Bytes::from(body), RETRY_FOR).await {
                Ok(()) => {
                    published.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = failure.lock() {
                        *f = None;
                    }
                    Ok(())
                }
                Err(e) => {
                    let msg = format!(
                        "JetStream did not acknowledge the entry within {} s: {e}",
                        RETRY_FOR.as_secs()
                    );
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(msg.clone());
                    }
                    Err(LedgerError::Unreachable(msg))
                }
            }
        })
    }

    fn announce(&self, event: Vec<u8>) -> PublishFuture<Result<(), LedgerError>> {
        let client = self.client.clone();
        let subject = self.names.release_subject.clone();
        Box::pin(async move {
            client
                .publish(subject, Bytes::from(event))
                .await
                .map_err(|e| LedgerError::Unreachable(format!("NATS: {e}")))?;
            client
                .flush()
                .await
                .map_err(|e| LedgerError::Unreachable(format!("NATS: {e}")))
        })
    }

    fn subscribe(&self, to: broadcast::Sender<Event>) {
        let client = self.client.clone();
        let subject = self.names.release_subject.clone();
        tokio::spawn(async move {
            // Resubscribes if the subscription ends (the client itself
            // reconnects underneath).
            loop {
                match client.subscribe(subject.clone()).await {
                    Ok(mut sub) => {
                        while let Some(m) = sub.next().await {
                            // No receiver right now is fine: advisory.
                            let _ = to.send(Arc::new(m.payload.to_vec()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to release events"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn drain(&self) -> PublishFuture<()> {
        let slots = self.slots.clone();
        let n = self.max_in_flight as u32;
        Box::pin(async move {
            let _ = tokio::time::timeout(DRAIN_FOR, slots.acquire_many(n)).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::transient_api_error;

    #[test]
    fn only_transient_answers_are_sent_again() {
        assert!(transient_api_error("connection reset"));
        assert!(transient_api_error(
            "publish failed: JetStream system temporarily unavailable (code 503, error code 10008)"
        ));
        assert!(!transient_api_error(
            "publish failed: message size exceeds maximum allowed (code 400, error code 10054)"
        ));
        assert!(!transient_api_error(
            "publish failed: wrong last sequence: 4 (code 400, error code 10071)"
        ));
    }
}
